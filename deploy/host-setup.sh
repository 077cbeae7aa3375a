#!/usr/bin/env bash
# deploy/host-setup.sh: make a Debian/Ubuntu host ready to run Kiln sandboxes.
#
# Idempotent. Safe to run on every `cargo xtask run|test` and in CI.
#   1. installs docker.io, runsc (gVisor), busybox-static, debootstrap;
#   2. registers runsc in /etc/docker/daemon.json with the flags Kiln needs:
#        --network=none  : the sandbox never gets a netstack of its own;
#        --host-uds=open : without it gVisor refuses connect() to the agent's
#                          bind-mounted Unix socket with EPERM (measured);
#   3. starts dockerd itself when no init system manages it (CI, containers).
set -euo pipefail

log() { printf '[host-setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs packages and writes /etc/docker/daemon.json)"
  exit 1
fi

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v runsc >/dev/null 2>&1 || need_pkgs+=(runsc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sh && ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' \
  || need_pkgs+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
else
  log "packages already installed"
fi

# Register runsc. We write the file only when its content would change, so a
# running daemon is not disturbed needlessly.
mkdir -p /etc/docker
desired=$(cat <<'JSON'
{
  "runtimes": {
    "runsc": {
      "path": "/usr/bin/runsc",
      "runtimeArgs": ["--network=none", "--host-uds=open"]
    }
  },
  "log-driver": "none"
}
JSON
)
current=$(cat /etc/docker/daemon.json 2>/dev/null || true)
daemon_changed=0
if [ "$current" != "$desired" ]; then
  if [ -n "$current" ]; then
    cp /etc/docker/daemon.json "/etc/docker/daemon.json.kiln-backup.$(date +%s)"
    log "existing /etc/docker/daemon.json backed up"
  fi
  printf '%s\n' "$desired" > /etc/docker/daemon.json
  daemon_changed=1
  log "registered runsc in /etc/docker/daemon.json"
fi

docker_ok() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if docker_ok; then
  if [ "$daemon_changed" -eq 1 ]; then
    if pidof systemd >/dev/null 2>&1 && systemctl is-active --quiet docker 2>/dev/null; then
      log "reloading docker for the new daemon.json"
      systemctl restart docker
    else
      log "restarting the self-managed dockerd for the new daemon.json"
      pkill -x dockerd || true
      for _ in $(seq 1 50); do pidof dockerd >/dev/null || break; sleep 0.2; done
    fi
  fi
fi

if ! docker_ok; then
  if pidof systemd >/dev/null 2>&1 && systemctl list-unit-files docker.service >/dev/null 2>&1 \
     && [ "$(ps -o comm= -p 1)" = systemd ]; then
    log "starting docker through systemd"
    systemctl start docker
  else
    log "no init system manages docker here: starting dockerd in the background (log: /var/log/kiln-dockerd.log)"
    nohup dockerd >/var/log/kiln-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 150); do docker_ok && break; sleep 0.2; done
fi

if ! docker_ok; then
  log "dockerd did not come up; last lines of its log:"
  tail -n 20 /var/log/kiln-dockerd.log >&2 || true
  exit 1
fi

log "docker $(docker version --format '{{.Server.Version}}') is up; runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
