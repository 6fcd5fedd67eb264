#!/usr/bin/env bash
# Real VNC test peers on 127.0.0.1 for guacr's integration tests.
#
#   scripts/peers.sh install [EXTRA_PKG...]   apt-get the packages the peers need (only the missing ones)
#   scripts/peers.sh start                    start every peer that is not already running (idempotent)
#   scripts/peers.sh stop                     stop every process we started (by recorded PID only)
#   scripts/peers.sh status                   print each peer as up/down (exit 0 only if all are up)
#   scripts/peers.sh env                      print shell-sourceable GUACR_* variables
#
# Peers:
#   changing  Xvfb :51 + x11vnc on 127.0.0.1:5901; xclock and `top` in an xterm keep the screen changing
#   static    Xtigervnc :52 on 127.0.0.1:5902; plaid xsetroot root + one static xterm (cursor hidden);
#             nothing on it changes by itself, for pixel comparison
#   typing    Xtigervnc :53 on 127.0.0.1:5903; an 80x24 xterm at +0+0 running bash, for typing tests
# All three use VNC password "guacpass".
#   rdp-shadow  Xvfb :55 (plaid root, an 80x24 bash xterm at +0+0 titled guacr-rdp-typing) shown by
#             freerdp-shadow-cli on 127.0.0.1:3390 (-auth: TLS or standard RDP security, any credentials)
#             and on 127.0.0.1:3391 (NLA only, NTLM against $RUN/rdp/shadow.sam: guactest/guacpass)
#   xrdp      xrdp + xrdp-sesman with their own configs on 127.0.0.1:3389 (TLS, or standard RDP security
#             with FIPS encryption, crypt_level=fips); logging in as guactest/guacpass starts an
#             Xorg (xorgxrdp) session running ~guactest/startwm.sh: the same plaid root and bash
#             xterm; it lets root's X clients in (xhost) for screenshots. A second xrdp listener on
#             127.0.0.1:3392 (same sesman and session) allows only standard RDP security, with RC4
#             (security_layer=rdp, crypt_level=high). One xrdp stack per machine (sesman's port is fixed).
#   ssh       OpenSSH sshd with its own config and host keys on 127.0.0.1:2222 ($RUN/ssh); user guactest,
#             password guacpass (password and keyboard-interactive), client keys in $RUN/ssh/keys:
#             id_ed25519, id_ed25519_pass (passphrase "keypass"), id_rsa (PEM, 2048), id_ecdsa, id_ecdsa_short
#             (worker-ssh/testdata: a P-256 key with a 31-byte scalar), id_ecdsa_short_pass (the same key,
#             passphrase "keypass");
#             the server's public keys in $RUN/ssh/known_hosts; port 2223 is the same sshd without the
#             "password" method (keyboard-interactive only)
#
# Keyboard focus on :53: there is no window manager, so the X server's focus is PointerRoot and key
# events go to the window under the pointer. The pointer starts at the screen centre (512,384), which
# lies inside the xterm, and tests should still move the pointer to (GUACR_TYPING_POINTER_X,
# GUACR_TYPING_POINTER_Y) = (200,150) before typing.
#
# State (logs/, pids/, the password files) lives in ${GUACR_RUN:-<repo>/run}. Each process is started
# with setsid; its PID (which is also its process group ID) and, after the exec, its executable are
# recorded, so a recycled PID is never mistaken for ours. Ports or displays held by anything we did not
# start make `start` refuse.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${GUACR_RUN:-$REPO/run}
LOGS=$RUN/logs
PIDS=$RUN/pids
PASSWORD=guacpass
PASSWD_FILE=$RUN/vnc.passwd
START_TIMEOUT_S=10

PACKAGES=(xvfb xauth x11-utils x11-apps x11-xserver-utils xterm fonts-dejavu-core procps iproute2
  x11vnc tigervnc-standalone-server tigervnc-tools openssh-server openssh-client
  xrdp xorgxrdp freerdp2-shadow-x11 winpr-utils openssl)

# Component names, in start order. Stop goes over all of them.
COMPONENTS=(xvfb51 x11vnc51 xclock51 xterm51 xtigervnc52 xterm52 xtigervnc53 xterm53 sshd
  xvfb55 xterm55 shadow3390 shadow3391 sesman xrdp xrdp3392)

RDP_DIR=$RUN/rdp
XRDP_PORT=3389
# A second xrdp listener on the same sesman with RC4 encryption (crypt_level=high) for standard security.
XRDP_RC4_PORT=3392
SESMAN_PORT=3350
SHADOW_DISPLAY=55
SHADOW_PORT=3390
SHADOW_NLA_PORT=3391

SSH_PORT=2222
SSH_KBDINT_PORT=2223
SSH_USER=guactest
SSH_PASSWORD=guacpass
SSH_DIR=$RUN/ssh

die() {
  echo "peers.sh: error: $*" >&2
  exit 1
}
note() { echo "peers.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------------
# install

pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

cmd_install() {
  local missing=() p
  for p in "${PACKAGES[@]}" "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    note "all packages present"
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    die "missing packages: ${missing[*]}; run 'scripts/peers.sh install' as root (or install them yourself)"
  fi
  note "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  for p in "${missing[@]}"; do
    pkg_installed "$p" || die "package $p is still not installed after apt-get install"
  done
}

# ---------------------------------------------------------------------------------------------------
# process bookkeeping

# Prints the process state letter (R, S, Z, ...) or nothing if the process is gone.
proc_state() {
  local line
  line=$(grep -m1 '^State:' "/proc/$1/status" 2>/dev/null) || return 0
  line=${line#State:}
  line=${line#"${line%%[![:space:]]*}"}
  printf '%s' "${line:0:1}"
}

# Alive and not a zombie (a killed daemon re-parented to PID 1 may be reaped late).
pid_alive() {
  local st
  st=$(proc_state "$1")
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# Start time (field 22 of /proc/PID/stat), to recognise a PID again later.
pid_starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  # After "comm) " the fields start at field 3 (state); starttime is field 22.
  awk '{print $20}' <<<"$stat"
}

pid_exe() { readlink "/proc/$1/exe" 2>/dev/null || true; }

# Recorded PID of a component that is ours and alive; non-zero otherwise.
ours_pid() {
  local name=$1 pid exe
  [[ -f "$PIDS/$name.pid" && -f "$PIDS/$name.exe" ]] || return 1
  pid=$(<"$PIDS/$name.pid")
  exe=$(<"$PIDS/$name.exe")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  [[ "$(pid_exe "$pid")" == "$exe" ]] || return 1
  printf '%s' "$pid"
}

log_tail() {
  local f=$LOGS/$1.log
  if [[ -f "$f" ]]; then
    echo "---- last lines of $f ----" >&2
    tail -n 25 "$f" >&2 || true
    echo "----" >&2
  fi
}

# spawn NAME EXE_NAME CMD...: start CMD detached in its own session; record PID and executable.
spawn() {
  local name=$1 bin=$2
  shift 2
  local want
  want=$(readlink -f "$(command -v "$bin")") || die "$bin not found; run scripts/peers.sh install"
  echo "==== $(date '+%F %T') starting: $*" >>"$LOGS/$name.log"
  # fd 9 is the lock; the daemons must not inherit it.
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  rm -f "$PIDS/$name.exe"
  # Right after fork the exe is still bash or setsid; wait for the exec of the real program.
  local i exe=
  for ((i = 0; i < 200; i++)); do
    exe=$(pid_exe "$pid")
    [[ "$exe" == "$want" ]] && break
    if ! pid_alive "$pid"; then
      log_tail "$name"
      die "$name ($*) exited at once"
    fi
    sleep 0.01
  done
  [[ "$exe" == "$want" ]] || {
    log_tail "$name"
    die "$name: pid $pid never became $want (exe: ${exe:-none})"
  }
  echo "$exe" >"$PIDS/$name.exe"
}

# ---------------------------------------------------------------------------------------------------
# readiness

port_listening() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
display_answers() { xdpyinfo -display ":$1" >/dev/null 2>&1; }
window_mapped() { xwininfo -display ":$1" -root -tree 2>/dev/null | grep -q -- "\"$2\""; }

# Something (not ours) holds the display: an answering server or a lock file with a live PID.
display_taken() {
  local n=$1 lockpid
  display_answers "$n" && return 0
  if [[ -f /tmp/.X$n-lock ]]; then
    lockpid=$(tr -dc 0-9 <"/tmp/.X$n-lock")
    [[ -n "$lockpid" ]] && pid_alive "$lockpid" && return 0
  fi
  return 1
}

# wait_for DEADLINE_NS NAME WHAT CHECK...: poll CHECK every 20 ms until it succeeds or the deadline.
wait_for() {
  local deadline=$1 name=$2 what=$3
  shift 3
  while ! "$@"; do
    if ! ours_pid "$name" >/dev/null; then
      log_tail "$name"
      die "$name died while waiting for $what"
    fi
    if (($(date +%s%N) > deadline)); then
      log_tail "$name"
      die "$name: $what not ready within ${START_TIMEOUT_S}s"
    fi
    sleep 0.02
  done
}

# ---------------------------------------------------------------------------------------------------
# start

ensure_passwd() {
  if [[ ! -s "$PASSWD_FILE" ]]; then
    command -v vncpasswd >/dev/null || die "vncpasswd not found; run scripts/peers.sh install"
    (umask 077 && printf '%s\n' "$PASSWORD" | vncpasswd -f >"$PASSWD_FILE.tmp")
    mv "$PASSWD_FILE.tmp" "$PASSWD_FILE"
  fi
  # A plain-text copy for tools that want the password itself.
  (umask 077 && printf '%s\n' "$PASSWORD" >"$RUN/vnc.password")
}

# start_x NAME DISPLAY PORT: refuse if the display or port is held by someone else.
refuse_foreign() {
  local name=$1 disp=$2 port=$3
  if display_taken "$disp"; then
    die "display :$disp is held by something we did not start (needed for $name); not touching it"
  fi
  if port_listening "$port"; then
    die "port $port is held by something we did not start (needed for $name): $(ss -Hltnp "sport = :$port" | head -1)"
  fi
}

start_changing() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000))
  if ! ours_pid xvfb51 >/dev/null; then
    # The X server is gone: so are its clients and its VNC server's reason to live.
    if ours_pid x11vnc51 >/dev/null; then stop_components x11vnc51; fi
    refuse_foreign xvfb51 51 5901
    spawn xvfb51 Xvfb Xvfb :51 -screen 0 1024x768x24 -nolisten tcp -noreset
  fi
  wait_for "$deadline" xvfb51 "display :51" display_answers 51
  if ! ours_pid x11vnc51 >/dev/null; then
    port_listening 5901 && die "port 5901 is held by something we did not start"
    spawn x11vnc51 x11vnc x11vnc -display :51 -rfbport 5901 -listen 127.0.0.1 -noipv6 -rfbportv6 -1 \
      -rfbauth "$PASSWD_FILE" -forever -shared -noxdamage -nopw -quiet
  fi
  if ! ours_pid xclock51 >/dev/null; then
    spawn xclock51 xclock env DISPLAY=:51 xclock -update 1 -geometry 200x200+800+540
  fi
  if ! ours_pid xterm51 >/dev/null; then
    spawn xterm51 xterm env DISPLAY=:51 xterm -T guacr-top -fa DejaVuSansMono -fs 11 \
      -geometry 100x30+20+20 -e top -d 0.5
  fi
  wait_for "$deadline" x11vnc51 "port 5901" port_listening 5901
  wait_for "$deadline" xclock51 "xclock window" window_mapped 51 xclock
  wait_for "$deadline" xterm51 "top xterm window" window_mapped 51 guacr-top
}

# start_tigervnc NAME DISPLAY PORT
# Xvnc blacklists an address after 5 failed security handshakes (a bare TCP probe counts as one), which
# would lock the tests out of their own servers; the wrong-password tests need the threshold raised.
start_tigervnc() {
  local name=$1 disp=$2 port=$3
  refuse_foreign "$name" "$disp" "$port"
  spawn "$name" Xtigervnc Xtigervnc ":$disp" -geometry 1024x768 -depth 24 -rfbport "$port" \
    -interface 127.0.0.1 -SecurityTypes VncAuth -PasswordFile "$PASSWD_FILE" -AlwaysShared \
    -nolisten tcp -desktop "guacr-test-$disp" -BlacklistThreshold 1000000 -BlacklistTimeout 0
}

start_static() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000)) fresh=0
  if ! ours_pid xtigervnc52 >/dev/null; then
    start_tigervnc xtigervnc52 52 5902
    fresh=1
  fi
  wait_for "$deadline" xtigervnc52 "display :52" display_answers 52
  wait_for "$deadline" xtigervnc52 "port 5902" port_listening 5902
  if ((fresh)); then
    # A deterministic, colourful root: 16x16 plaid of two colours.
    DISPLAY=:52 xsetroot -mod 16 16 -fg '#d03020' -bg '#2040c0' 9>&- ||
      die "xsetroot on :52 failed"
  fi
  if ! ours_pid xterm52 >/dev/null; then
    # Static text; the cursor is hidden (DECTCEM) so focus changes do not redraw it.
    spawn xterm52 xterm env DISPLAY=:52 xterm -T guacr-static +bc -fa DejaVuSansMono -fs 14 \
      -bg black -fg white -geometry 60x10+40+40 \
      -e sh -c 'printf "\033[?25lguacr static screen\n\nABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\n"; exec sleep infinity'
  fi
  wait_for "$deadline" xterm52 "static xterm window" window_mapped 52 guacr-static
}

start_typing() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000))
  if ! ours_pid xtigervnc53 >/dev/null; then
    start_tigervnc xtigervnc53 53 5903
  fi
  wait_for "$deadline" xtigervnc53 "display :53" display_answers 53
  wait_for "$deadline" xtigervnc53 "port 5903" port_listening 5903
  if ! ours_pid xterm53 >/dev/null; then
    spawn xterm53 xterm env DISPLAY=:53 PS1='$ ' xterm -T guacr-typing +bc -fa DejaVuSansMono -fs 14 \
      -bg black -fg white -geometry 80x24+0+0 -e bash --norc --noprofile
  fi
  wait_for "$deadline" xterm53 "typing xterm window" window_mapped 53 guacr-typing
}

# The test user, its keys and sshd's own config (never the system's /etc/ssh).
ssh_setup() {
  local k home
  if ! id "$SSH_USER" >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "user $SSH_USER is missing; run scripts/peers.sh start as root once"
    useradd -m -s /bin/bash "$SSH_USER"
  fi
  if [[ $(id -u) -eq 0 ]]; then
    echo "$SSH_USER:$SSH_PASSWORD" | chpasswd
  fi
  mkdir -p "$SSH_DIR/keys" /run/sshd
  chmod 700 "$SSH_DIR" "$SSH_DIR/keys"
  for k in ed25519 ecdsa rsa; do
    [[ -s "$SSH_DIR/host_$k" ]] || ssh-keygen -q -N '' -t "$k" -f "$SSH_DIR/host_$k" 9>&-
  done
  [[ -s "$SSH_DIR/keys/id_ed25519" ]] || ssh-keygen -q -N '' -t ed25519 -f "$SSH_DIR/keys/id_ed25519" 9>&-
  [[ -s "$SSH_DIR/keys/id_ed25519_pass" ]] ||
    ssh-keygen -q -N keypass -t ed25519 -f "$SSH_DIR/keys/id_ed25519_pass" 9>&-
  [[ -s "$SSH_DIR/keys/id_rsa" ]] || ssh-keygen -q -N '' -t rsa -b 2048 -m PEM -f "$SSH_DIR/keys/id_rsa" 9>&-
  [[ -s "$SSH_DIR/keys/id_ecdsa" ]] || ssh-keygen -q -N '' -t ecdsa -b 256 -f "$SSH_DIR/keys/id_ecdsa" 9>&-
  # A fixed P-256 key whose private scalar starts with a zero byte (one in 256 generated keys is such a key;
  # worker-ssh repairs it before decoding): the login test uses it every time, not by chance.
  install -m 600 "$REPO/worker-ssh/testdata/ecdsa_p256_short_scalar" "$SSH_DIR/keys/id_ecdsa_short"
  ssh-keygen -y -f "$SSH_DIR/keys/id_ecdsa_short" >"$SSH_DIR/keys/id_ecdsa_short.pub" 9>&-
  # The same key protected by the passphrase "keypass" (aes256-ctr, bcrypt-pbkdf): worker-ssh decrypts it
  # itself to repair it. Its public half is id_ecdsa_short.pub.
  install -m 600 "$REPO/worker-ssh/testdata/ecdsa_p256_short_scalar_aes256ctr" "$SSH_DIR/keys/id_ecdsa_short_pass"
  for k in ed25519 ecdsa rsa; do
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(<"$SSH_DIR/host_$k.pub")"
  done >"$SSH_DIR/known_hosts"
  # sshd reads authorized_keys as the user, so it lives in the test user's own home.
  home=$(getent passwd "$SSH_USER" | cut -d: -f6)
  if [[ $(id -u) -eq 0 ]]; then
    install -d -m 700 -o "$SSH_USER" -g "$SSH_USER" "$home/.ssh"
    cat "$SSH_DIR"/keys/*.pub >"$home/.ssh/authorized_keys"
    chown "$SSH_USER:" "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
  fi
  cat >"$SSH_DIR/sshd_config" <<SSHD_CONFIG
Port $SSH_PORT
Port $SSH_KBDINT_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/host_ed25519
HostKey $SSH_DIR/host_ecdsa
HostKey $SSH_DIR/host_rsa
PidFile $SSH_DIR/sshd.pid
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication yes
UsePAM yes
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_* TZ
MaxStartups 100:30:200
MaxAuthTries 10
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
# The second port offers no "password" method: clients must use keyboard-interactive.
Match LocalPort $SSH_KBDINT_PORT
  PasswordAuthentication no
SSHD_CONFIG
  /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" 9>&- || die "sshd rejects $SSH_DIR/sshd_config"
}

start_ssh() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000))
  if ! ours_pid sshd >/dev/null; then
    port_listening "$SSH_PORT" && die "port $SSH_PORT is held by something we did not start (needed for sshd)"
    ssh_setup
    spawn sshd sshd /usr/sbin/sshd -D -f "$SSH_DIR/sshd_config" -E "$LOGS/sshd.log"
  fi
  wait_for "$deadline" sshd "port $SSH_PORT" port_listening "$SSH_PORT"
}

# ---------------------------------------------------------------------------------------------------
# RDP peers

# The plaid root and bash xterm both RDP desktops show (DISPLAY set by the caller).
RDP_XTERM_ARGS=(-T guacr-rdp-typing +bc -fa DejaVuSansMono -fs 14 -bg black -fg white -geometry 80x24+0+0
  -e bash --norc --noprofile)

start_shadow() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000)) n fresh=0
  if ! ours_pid xvfb55 >/dev/null; then
    for n in xterm55 shadow3390 shadow3391; do
      if ours_pid "$n" >/dev/null; then stop_components "$n"; fi
    done
    refuse_foreign xvfb55 "$SHADOW_DISPLAY" "$SHADOW_PORT"
    spawn xvfb55 Xvfb Xvfb ":$SHADOW_DISPLAY" -screen 0 1024x768x24 -nolisten tcp -noreset
    fresh=1
  fi
  wait_for "$deadline" xvfb55 "display :$SHADOW_DISPLAY" display_answers "$SHADOW_DISPLAY"
  if ((fresh)); then
    DISPLAY=:$SHADOW_DISPLAY xsetroot -mod 16 16 -fg '#d03020' -bg '#2040c0' 9>&- ||
      die "xsetroot on :$SHADOW_DISPLAY failed"
  fi
  if ! ours_pid xterm55 >/dev/null; then
    spawn xterm55 xterm env DISPLAY=:$SHADOW_DISPLAY PS1='$ ' xterm "${RDP_XTERM_ARGS[@]}"
  fi
  # freerdp-shadow keeps its TLS key and certificate under $HOME/.config/freerdp.
  mkdir -p "$RDP_DIR/shadow-home"
  chmod 700 "$RDP_DIR"
  if [[ ! -s "$RDP_DIR/shadow.sam" ]]; then
    winpr-hash -u "$SSH_USER" -p "$SSH_PASSWORD" -f sam >"$RDP_DIR/shadow.sam.tmp" 9>&- || die "winpr-hash failed"
    mv "$RDP_DIR/shadow.sam.tmp" "$RDP_DIR/shadow.sam"
  fi
  if ! ours_pid shadow3390 >/dev/null; then
    port_listening "$SHADOW_PORT" && die "port $SHADOW_PORT is held by something we did not start"
    spawn shadow3390 freerdp-shadow-cli env DISPLAY=:$SHADOW_DISPLAY HOME="$RDP_DIR/shadow-home" \
      freerdp-shadow-cli /bind-address:127.0.0.1 /port:$SHADOW_PORT -auth
  fi
  # The first server writes the certificate; the second must not race it.
  wait_for "$deadline" shadow3390 "port $SHADOW_PORT" port_listening "$SHADOW_PORT"
  if ! ours_pid shadow3391 >/dev/null; then
    port_listening "$SHADOW_NLA_PORT" && die "port $SHADOW_NLA_PORT is held by something we did not start"
    spawn shadow3391 freerdp-shadow-cli env DISPLAY=:$SHADOW_DISPLAY HOME="$RDP_DIR/shadow-home" \
      freerdp-shadow-cli /bind-address:127.0.0.1 /port:$SHADOW_NLA_PORT +auth /sec:nla \
      /sam-file:"$RDP_DIR/shadow.sam"
  fi
  wait_for "$deadline" xterm55 "rdp typing xterm window" window_mapped "$SHADOW_DISPLAY" guacr-rdp-typing
  wait_for "$deadline" shadow3391 "port $SHADOW_NLA_PORT" port_listening "$SHADOW_NLA_PORT"
}

# xrdp's own configs (copies of the Debian ones), its certificate, runtime directories, and the
# test user's session script.
xrdp_setup() {
  local dir=$RDP_DIR/xrdp home pid f
  mkdir -p "$dir"
  chmod 700 "$RDP_DIR" "$dir"
  if [[ ! -s "$dir/key.pem" || ! -s "$dir/cert.pem" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=127.0.0.1 \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null 9>&- || die "openssl could not make xrdp's certificate"
  fi
  sed -e "s|^port=3389\$|port=tcp://127.0.0.1:$XRDP_PORT|" -e 's|^crypt_level=.*|crypt_level=fips|' \
    -e "s|^certificate=.*|certificate=$dir/cert.pem|" -e "s|^key_file=.*|key_file=$dir/key.pem|" \
    -e "/^\[Logging\]/,/^\[/ s|^LogFile=.*|LogFile=$LOGS/xrdp-server.log|" -e 's|^EnableSyslog=.*|EnableSyslog=false|' \
    /etc/xrdp/xrdp.ini >"$dir/xrdp.ini"
  sed -e "0,/^port=/ s|^port=.*|port=tcp://127.0.0.1:$XRDP_RC4_PORT|" -e 's|^crypt_level=.*|crypt_level=high|' \
    -e 's|^security_layer=.*|security_layer=rdp|' \
    -e "/^\[Logging\]/,/^\[/ s|^LogFile=.*|LogFile=$LOGS/xrdp-rc4-server.log|" "$dir/xrdp.ini" >"$dir/xrdp-rc4.ini"
  sed -e 's|^KillDisconnected=.*|KillDisconnected=false|' \
    -e "/^\[Logging\]/,/^\[/ s|^LogFile=.*|LogFile=$LOGS/xrdp-sesman-server.log|" \
    -e 's|^EnableSyslog=.*|EnableSyslog=false|' /etc/xrdp/sesman.ini >"$dir/sesman.ini"
  # What the init system would create.
  mkdir -p /run/xrdp/sockdir
  chown root:xrdp /run/xrdp /run/xrdp/sockdir
  chmod 2775 /run/xrdp
  chmod 3777 /run/xrdp/sockdir
  # A stale PID file makes xrdp and sesman refuse to start.
  for f in /run/xrdp/xrdp.pid /run/xrdp/xrdp-sesman.pid; do
    if [[ -f "$f" ]]; then
      pid=$(tr -dc 0-9 <"$f")
      if [[ -z "$pid" ]] || ! pid_alive "$pid"; then rm -f "$f"; fi
    fi
  done
  home=$(getent passwd "$SSH_USER" | cut -d: -f6)
  {
    echo '#!/bin/sh'
    echo '# guacr test session (scripts/peers.sh): root may screenshot this display.'
    echo 'xhost +si:localuser:root'
    echo "xsetroot -mod 16 16 -fg '#d03020' -bg '#2040c0'"
    echo "PS1='\$ ' exec xterm ${RDP_XTERM_ARGS[*]}"
  } >"$home/startwm.sh"
  chown "$SSH_USER:" "$home/startwm.sh"
  chmod 755 "$home/startwm.sh"
}

start_xrdp() {
  local deadline=$(($(date +%s%N) + START_TIMEOUT_S * 1000000000))
  # An xrdp an older harness started unencrypted (crypt_level=none) is restarted with today's config.
  if ours_pid xrdp >/dev/null && ! grep -qx 'crypt_level=fips' "$RDP_DIR/xrdp/xrdp.ini" 2>/dev/null; then
    stop_components xrdp
  fi
  if ours_pid xrdp3392 >/dev/null && ! grep -qx 'security_layer=rdp' "$RDP_DIR/xrdp/xrdp-rc4.ini" 2>/dev/null; then
    stop_components xrdp3392
  fi
  if ! ours_pid sesman >/dev/null || ! ours_pid xrdp >/dev/null || ! ours_pid xrdp3392 >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "xrdp needs root (sesman starts sessions as the test user)"
    ssh_setup
    xrdp_setup
  fi
  if ! ours_pid sesman >/dev/null; then
    port_listening "$SESMAN_PORT" && die "port $SESMAN_PORT is held by something we did not start (xrdp-sesman)"
    spawn sesman xrdp-sesman xrdp-sesman --nodaemon --config "$RDP_DIR/xrdp/sesman.ini"
  fi
  wait_for "$deadline" sesman "port $SESMAN_PORT" port_listening "$SESMAN_PORT"
  if ! ours_pid xrdp >/dev/null; then
    port_listening "$XRDP_PORT" && die "port $XRDP_PORT is held by something we did not start (xrdp)"
    spawn xrdp xrdp xrdp --nodaemon --config "$RDP_DIR/xrdp/xrdp.ini"
  fi
  wait_for "$deadline" xrdp "port $XRDP_PORT" port_listening "$XRDP_PORT"
  # With --nodaemon xrdp writes no PID file, so two listeners do not collide.
  if ! ours_pid xrdp3392 >/dev/null; then
    port_listening "$XRDP_RC4_PORT" && die "port $XRDP_RC4_PORT is held by something we did not start (xrdp)"
    spawn xrdp3392 xrdp xrdp --nodaemon --config "$RDP_DIR/xrdp/xrdp-rc4.ini"
  fi
  wait_for "$deadline" xrdp3392 "port $XRDP_RC4_PORT" port_listening "$XRDP_RC4_PORT"
}

cmd_start() {
  local b
  for b in Xvfb x11vnc Xtigervnc xdpyinfo xwininfo xsetroot xclock xterm vncpasswd ss setsid; do
    command -v "$b" >/dev/null || die "$b not found; run scripts/peers.sh install (as root)"
  done
  ensure_passwd
  start_changing
  start_static
  start_typing
  [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd not found; run scripts/peers.sh install (as root)"
  start_ssh
  for b in freerdp-shadow-cli winpr-hash xrdp xrdp-sesman openssl xhost; do
    command -v "$b" >/dev/null || die "$b not found; run scripts/peers.sh install (as root)"
  done
  start_shadow
  start_xrdp
  note "all peers up (run dir $RUN)"
}

# ---------------------------------------------------------------------------------------------------
# stop

# Prints the descendants of PID, recursively, one "pid starttime" per line.
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
    echo "$child $(pid_starttime "$child")"
    descendants "$child"
  done
}

# stop_components NAME...: TERM (group + descendants), wait up to 5 s, then KILL what is left.
stop_components() {
  local name pid victims=() groups=() line
  for name in "$@"; do
    pid=$(ours_pid "$name") || {
      rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
      continue
    }
    groups+=("$pid")
    victims+=("$pid $(pid_starttime "$pid")")
    while read -r line; do
      [[ -n "$line" ]] && victims+=("$line")
    done < <(descendants "$pid")
  done
  ((${#victims[@]} == 0)) && return 0
  for pid in "${groups[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for line in "${victims[@]}"; do
    kill -TERM "${line%% *}" 2>/dev/null || true
  done
  local i left
  for ((i = 0; i < 250; i++)); do
    left=0
    for line in "${victims[@]}"; do
      same_process "$line" && left=1 && break
    done
    ((left)) || break
    sleep 0.02
  done
  for line in "${victims[@]}"; do
    if same_process "$line"; then
      note "pid ${line%% *} did not exit after TERM; sending KILL"
      kill -KILL "${line%% *}" 2>/dev/null || true
    fi
  done
  for name in "$@"; do
    rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
  done
}

# "pid starttime" still names the same live (non-zombie) process.
same_process() {
  local pid=${1%% *} st=${1#* }
  pid_alive "$pid" && [[ "$(pid_starttime "$pid")" == "$st" ]]
}

cmd_stop() {
  [[ -d "$PIDS" ]] || return 0
  stop_components "${COMPONENTS[@]}"
  note "stopped"
}

# ---------------------------------------------------------------------------------------------------
# status, env

peer_status() {
  local peer=$1 disp=$2 port=$3
  shift 3
  local name pid ok=1 detail=()
  for name in "$@"; do
    if pid=$(ours_pid "$name"); then
      detail+=("$name=$pid")
    else
      detail+=("$name=down")
      ok=0
    fi
  done
  port_listening "$port" || {
    ok=0
    detail+=("port $port closed")
  }
  display_answers "$disp" || {
    ok=0
    detail+=("display :$disp not answering")
  }
  printf '%-9s %-4s 127.0.0.1:%s display :%s  %s\n' "$peer" "$([[ $ok == 1 ]] && echo up || echo down)" \
    "$port" "$disp" "${detail[*]}"
  return $((1 - ok))
}

cmd_status() {
  local rc=0
  peer_status changing 51 5901 xvfb51 x11vnc51 xclock51 xterm51 || rc=1
  peer_status static 52 5902 xtigervnc52 xterm52 || rc=1
  peer_status typing 53 5903 xtigervnc53 xterm53 || rc=1
  local sshd_pid
  if sshd_pid=$(ours_pid sshd) && port_listening "$SSH_PORT"; then
    printf '%-9s %-4s 127.0.0.1:%s  sshd=%s\n' ssh up "$SSH_PORT" "$sshd_pid"
  else
    printf '%-9s %-4s 127.0.0.1:%s\n' ssh down "$SSH_PORT"
    rc=1
  fi
  peer_status rdp-shadow "$SHADOW_DISPLAY" "$SHADOW_PORT" xvfb55 xterm55 shadow3390 shadow3391 || rc=1
  port_listening "$SHADOW_NLA_PORT" || {
    printf '%-9s %-4s 127.0.0.1:%s (NLA) closed\n' rdp-shadow down "$SHADOW_NLA_PORT"
    rc=1
  }
  local xrdp_pid sesman_pid
  if xrdp_pid=$(ours_pid xrdp) && sesman_pid=$(ours_pid sesman) && port_listening "$XRDP_PORT"; then
    printf '%-9s %-4s 127.0.0.1:%s  xrdp=%s sesman=%s\n' xrdp up "$XRDP_PORT" "$xrdp_pid" "$sesman_pid"
  else
    printf '%-9s %-4s 127.0.0.1:%s\n' xrdp down "$XRDP_PORT"
    rc=1
  fi
  if xrdp_pid=$(ours_pid xrdp3392) && port_listening "$XRDP_RC4_PORT"; then
    printf '%-9s %-4s 127.0.0.1:%s  xrdp=%s (RC4)\n' xrdp-rc4 up "$XRDP_RC4_PORT" "$xrdp_pid"
  else
    printf '%-9s %-4s 127.0.0.1:%s (RC4)\n' xrdp-rc4 down "$XRDP_RC4_PORT"
    rc=1
  fi
  return $rc
}

cmd_env() {
  cat <<EOF
export GUACR_RUN='$RUN'
export GUACR_VNC_CHANGING=127.0.0.1:5901
export GUACR_VNC_STATIC=127.0.0.1:5902
export GUACR_VNC_TYPING=127.0.0.1:5903
export GUACR_VNC_PASSWORD=$PASSWORD
export GUACR_VNC_PASSWD_FILE='$PASSWD_FILE'
export GUACR_DISPLAY_CHANGING=:51
export GUACR_DISPLAY_STATIC=:52
export GUACR_DISPLAY_TYPING=:53
export GUACR_TYPING_POINTER_X=200
export GUACR_TYPING_POINTER_Y=150
export GUACR_SSH=127.0.0.1:$SSH_PORT
export GUACR_SSH_KBDINT=127.0.0.1:$SSH_KBDINT_PORT
export GUACR_SSH_USER=$SSH_USER
export GUACR_SSH_PASSWORD=$SSH_PASSWORD
export GUACR_SSH_DIR='$SSH_DIR'
export GUACR_RDP_SHADOW=127.0.0.1:$SHADOW_PORT
export GUACR_RDP_SHADOW_NLA=127.0.0.1:$SHADOW_NLA_PORT
export GUACR_DISPLAY_RDP_SHADOW=:$SHADOW_DISPLAY
export GUACR_RDP_XRDP=127.0.0.1:$XRDP_PORT
export GUACR_RDP_XRDP_RC4=127.0.0.1:$XRDP_RC4_PORT
export GUACR_RDP_USER=$SSH_USER
export GUACR_RDP_PASSWORD=$SSH_PASSWORD
EOF
}

# ---------------------------------------------------------------------------------------------------

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
  install) cmd_install "$@" ;;
  env) cmd_env ;;
  start | stop | status)
    mkdir -p "$LOGS" "$PIDS"
    chmod 700 "$RUN"
    # One peers.sh at a time per run dir.
    exec 9>"$RUN/.lock"
    flock -w 30 9 || die "another peers.sh holds $RUN/.lock"
    "cmd_$cmd"
    ;;
  *)
    sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
  esac
}

main "$@"
