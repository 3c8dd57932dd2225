"""Client fingerprints taken from the first bytes of a connection: the TLS ClientHello (JA3,
JA4) and the SSH KEXINIT (HASSH). Pure functions of bytes; nothing here touches a socket."""
