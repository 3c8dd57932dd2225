from honeytrap.cli import main

raise SystemExit(main())
