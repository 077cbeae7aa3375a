#!/usr/bin/env bash
# deploy/host-setup.sh: make a Debian/Ubuntu host ready to run Kiln sandboxes.
#
# Idempotent. Safe to run on every `cargo xtask run|test` and in CI.
#   1. installs docker.io, runsc (gVisor), busybox-static, debootstrap;
#   2. registers runsc in /etc/docker/daemon.json with the flags Kiln needs:
#        --network=none  : the sandbox never gets a netstack of its own;
#        --host-uds=open : without it gVisor refuses connect() to the agent's
#                          bind-mounted Unix socket with EPERM (measured);
#        --oci-seccomp   : apply the container's seccomp profile (Kiln's
#                          kiln.json) inside the Sentry too; without it a step
#                          under runsc sees `Seccomp: 0` (measured);
#      and reloads a running dockerd with SIGHUP (dockerd re-reads `runtimes`
#      on SIGHUP: running containers and other clients are not disturbed);
#      only a change of a setting that cannot be reloaded (the log driver)
#      restarts it;
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
# (No `grep -q` after a pipe and no `ldd | grep`: under pipefail a SIGPIPE'd
# writer, or ldd's exit 1 for a static binary, failed the test on every run.)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x sh >/dev/null && ! ldd /bin/busybox >/dev/null 2>&1 \
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
      "runtimeArgs": ["--network=none", "--host-uds=open", "--oci-seccomp"]
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
uses_systemd() { pidof systemd >/dev/null 2>&1 && systemctl is-active --quiet docker 2>/dev/null; }
# The running daemon's view, compared with what daemon.json asks for.
runsc_registered() {
  timeout 5 docker info --format '{{json .Runtimes.runsc}}' 2>/dev/null \
    | grep -q '"runtimeArgs":\["--network=none","--host-uds=open","--oci-seccomp"\]'
}
log_driver_none() { [ "$(timeout 5 docker info --format '{{.LoggingDriver}}' 2>/dev/null)" = none ]; }

if docker_ok && { [ "$daemon_changed" -eq 1 ] || ! runsc_registered; }; then
  # SIGHUP: dockerd re-reads daemon.json and applies `runtimes` (measured on
  # 20.10.24: "Reloaded configuration" lists the new runtimeArgs; containers
  # created afterwards use them, running ones are untouched). A bad file is
  # rejected by the daemon, which then keeps its previous configuration.
  if uses_systemd; then
    log "reloading docker (SIGHUP) for the new daemon.json"
    systemctl reload docker
  else
    log "reloading the self-managed dockerd (SIGHUP) for the new daemon.json"
    kill -HUP "$(pidof -s dockerd)"
  fi
  for _ in $(seq 1 25); do runsc_registered && break; sleep 0.2; done
  if ! runsc_registered; then
    log "dockerd did not pick up the runsc registration on reload; its runtimes now:"
    timeout 5 docker info --format '{{json .Runtimes}}' >&2 || true
    exit 1
  fi
  log "runsc registration reloaded"
  if ! log_driver_none; then
    # The log driver is not reloadable: this is the one case that restarts
    # dockerd (a fresh host whose daemon still logs to json-file).
    if uses_systemd; then
      log "restarting docker: the log driver changes only on restart"
      systemctl restart docker
    else
      log "restarting the self-managed dockerd: the log driver changes only on restart"
      kill -TERM "$(pidof -s dockerd)" || true
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
