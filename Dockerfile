# honeytrap as T-Pot's catch-all sensor, in place of its C honeytrap image (README: "Replacing
# T-Pot's honeytrap"). T-Pot's contract: the paths under /opt/honeytrap, user and group
# honeytrap (2000), its command line, a read-only root with a tmpfs at /tmp/honeytrap, host
# networking, cap_add NET_ADMIN. etc/docker-compose.yml is the service to put in T-Pot's
# compose file.

# --- build: our wheel and the wheels of every dependency (pcapy-ng and netfilterqueue compile
# against libpcap and libnetfilter_queue) -------------------------------------------------------
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev build-essential pkg-config \
      libpcap-dev libnetfilter-queue-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres,hpfeeds,downloads]"

# --- run ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# iptables: honeytrap reads the firewall back at start (a queue fed without a reader is logged);
# libcap2-bin: setcap, below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv libpcap0.8 libnetfilter-queue1 libmagic1 iptables nftables \
      libcap2-bin procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/honeytrap/venv \
 && /opt/honeytrap/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels \
      "honeytrap[postgres,hpfeeds,downloads]" \
 && rm -rf /wheels
# T-Pot's user and layout. Templates and plugins are copied out of the installed package into
# T-Pot's paths (its compose file and configuration name them there).
RUN groupadd --gid 2000 honeytrap \
 && useradd --system --uid 2000 --gid 2000 --no-create-home --shell /usr/sbin/nologin honeytrap \
 && mkdir -p /opt/honeytrap/etc/honeytrap /opt/honeytrap/sbin /opt/honeytrap/var/attacks \
      /opt/honeytrap/var/downloads /opt/honeytrap/var/log /var/lib/honeytrap /tmp/honeytrap \
 && data="$(/opt/honeytrap/venv/bin/python -c \
      'from honeytrap import resources; print(resources.data_path("plugins").parent)')" \
 && cp -r "$data/templates" /opt/honeytrap/etc/honeytrap/responses \
 && cp -r "$data/plugins" /opt/honeytrap/etc/honeytrap/plugins \
 && ln -s /opt/honeytrap/venv/bin/honeytrap /opt/honeytrap/sbin/honeytrap \
 && chown -R honeytrap:honeytrap /opt/honeytrap/var /var/lib/honeytrap /tmp/honeytrap
# As T-Pot's image does for its binary: the interpreter (this image runs nothing else) gets
# CAP_NET_ADMIN, to read NFQUEUE as user honeytrap. Only that one: a file capability the
# container's bounding set lacks would make exec fail, and cap_add NET_ADMIN is all T-Pot
# grants. Ports below 1024 are then refused (logged); add NET_BIND_SERVICE to both for them.
RUN setcap cap_net_admin=ep "$(readlink -f /usr/bin/python3)"
COPY etc/tpot/honeytrap.conf /opt/honeytrap/etc/honeytrap/honeytrap.conf
# The sensor id and TLS certificate (state_dir): a volume, since the root is read-only.
VOLUME ["/opt/honeytrap/var/attacks", "/opt/honeytrap/var/downloads", "/opt/honeytrap/var/log", \
        "/var/lib/honeytrap"]
ENV PYTHONDONTWRITEBYTECODE=1
USER honeytrap:honeytrap
CMD ["/opt/honeytrap/sbin/honeytrap", "-D", "-C", "/opt/honeytrap/etc/honeytrap/honeytrap.conf", \
     "-P", "/tmp/honeytrap/honeytrap.pid", "-t", "5", "-u", "honeytrap", "-g", "honeytrap"]
