# Kubernetes control plane of the local test stack: etcd, kube-apiserver,
# kube-controller-manager and kubectl, built from the Go module proxy and run as plain
# processes on loopback. Sourced after common.sh, never run.
# shellcheck shell=bash

K8S_DIR="$STREAMJOB_STATE/k8s"
K8S_PKI="$K8S_DIR/pki"
K8S_KUBECONFIG="$K8S_DIR/admin.kubeconfig"
K8S_KCM_KUBECONFIG="$K8S_DIR/kube-controller-manager.kubeconfig"
K8S_API_PORT=6443
K8S_KCM_PORT=10257
K8S_ETCD_CLIENT_PORT=23790
K8S_ETCD_PEER_PORT=23800
K8S_SERVICE_CIDR=10.0.0.0/24
K8S_SERVICE_IP=10.0.0.1

K8S_BIN_DIR="$STREAMJOB_CACHE/k8s/v$K8S_VERSION"
ETCD_BIN_DIR="$STREAMJOB_CACHE/etcd/v$ETCD_VERSION"
K8S_BINARIES=(kube-apiserver kube-controller-manager kubectl)

# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------

# _k8s_gomod MODULE@VERSION: print the path of that module's go.mod in the module cache.
# Runs outside any module so a half-written wrapper go.mod cannot get in the way.
_k8s_gomod() {
  local json
  json="$(cd "$STREAMJOB_CACHE" && GOWORK=off GOFLAGS=-modcacherw go mod download -json "$1")" || return 1
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# _k8s_wrapper_head GOMOD MODULE: the module line, the go line and the godebug lines of
# GOMOD (only the main module's godebug settings take effect, so they must be copied).
_k8s_wrapper_head() {
  printf 'module %s\n\n' "$2"
  awk '$1 == "go" { print; print ""; exit }' "$1"
  awk '
    /^godebug[[:space:]]*\(/ { block = 1; print; next }
    block { print; if ($0 ~ /^[[:space:]]*\)/) block = 0; next }
    /^godebug[[:space:]]/ { print }
  ' "$1"
  echo
}

# _k8s_go_build SRC_DIR DEST_DIR LDFLAGS OUT PACKAGE...: go mod tidy in SRC_DIR, then
# go build the packages into a temp dir next to DEST_DIR and move the binaries into place
# one by one (rename is atomic, so an interrupted build never leaves a half-written
# binary). OUT names the binary when there is one package; empty keeps go's names.
_k8s_go_build() {
  local src="$1" dest="$2" ldflags="$3" out="$4"
  shift 4
  local tmp
  mkdir -p "$dest" || return 1
  tmp="$(mktemp -d "$dest/.build.XXXXXX")" || return 1
  (
    cd "$src" || exit 1
    echo "== go mod tidy in $src"
    go mod tidy || exit 1
    echo "== CGO_ENABLED=0 go build $* (ldflags: $ldflags)"
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$out" "$@" || exit 1
  )
  local rc=$?
  if ((rc == 0)); then
    local f
    for f in "$tmp"/*; do
      mv -f "$f" "$dest/" || { rc=1; break; }
    done
  fi
  rm -rf "$tmp"
  return "$rc"
}

_k8s_build_etcd() {
  if [[ -x "$ETCD_BIN_DIR/etcd" ]]; then
    return 0
  fi
  local logf="$STACK_LOGS/etcd-build.log" src="$STREAMJOB_CACHE/etcd/src-v$ETCD_VERSION"
  log "building etcd v$ETCD_VERSION (log: $logf)"
  : >"$logf"
  mkdir -p "$src"
  local gomod
  gomod="$(_k8s_gomod "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" 2>>"$logf")" || true
  [[ -n "$gomod" && -f "$gomod" ]] || die etcd-build "$logf" "cannot download go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  # The server module's own replace lines point at sibling folders of the etcd repository
  # (../api, ../client/v3, ...) whose published versions it already requires at the same
  # version, so the wrapper needs no replace lines. Its main package is the module root.
  {
    _k8s_wrapper_head "$gomod" streamjob-stack/etcd
    printf 'require go.etcd.io/etcd/server/v3 v%s\n\n' "$ETCD_VERSION"
    printf 'tool go.etcd.io/etcd/server/v3\n'
  } >"$src/go.mod"
  local t0=$SECONDS
  # Named explicitly: go would call it "server" (the path minus its major-version suffix).
  _k8s_go_build "$src" "$ETCD_BIN_DIR" "-s -w" etcd go.etcd.io/etcd/server/v3 >>"$logf" 2>&1 ||
    die etcd-build "$logf" "building etcd v$ETCD_VERSION failed"
  [[ -x "$ETCD_BIN_DIR/etcd" ]] || die etcd-build "$logf" "build succeeded but $ETCD_BIN_DIR/etcd is missing"
  log "etcd v$ETCD_VERSION built in $((SECONDS - t0))s"
}

_k8s_build_kube() {
  local b missing=0
  for b in "${K8S_BINARIES[@]}"; do
    [[ -x "$K8S_BIN_DIR/$b" ]] || missing=1
  done
  ((missing)) || return 0

  local logf="$STACK_LOGS/k8s-build.log" src="$STREAMJOB_CACHE/k8s/src-v$K8S_VERSION"
  log "building Kubernetes v$K8S_VERSION: ${K8S_BINARIES[*]} (cold: about 10 min on 2 cores; log: $logf)"
  : >"$logf"
  mkdir -p "$src"
  local gomod
  gomod="$(_k8s_gomod "k8s.io/kubernetes@v$K8S_VERSION" 2>>"$logf")" || true
  [[ -n "$gomod" && -f "$gomod" ]] || die k8s-build "$logf" "cannot download k8s.io/kubernetes@v$K8S_VERSION"

  local major="${K8S_VERSION%%.*}" rest="${K8S_VERSION#*.}"
  local minor="${rest%%.*}" patch="${rest#*.}"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with folders
  # of its own repository; replace lines only count in the main module, so the wrapper maps
  # each of them to the published v0.MINOR.PATCH. Read the list from that go.mod: it changes
  # between releases.
  local staging
  staging="$(sed -nE 's/^(require[[:space:]]+|[[:space:]]+)(k8s\.io\/[^[:space:]]+)[[:space:]]+v0\.0\.0([[:space:]].*)?$/\2/p' "$gomod" | sort -u)"
  [[ -n "$staging" ]] || die k8s-build "$logf" "found no k8s.io/* v0.0.0 requirements in $gomod"
  {
    _k8s_wrapper_head "$gomod" streamjob-stack/k8s
    printf 'require k8s.io/kubernetes v%s\n\n' "$K8S_VERSION"
    echo 'replace ('
    local m
    for m in $staging; do
      printf '\t%s => %s v0.%s.%s\n' "$m" "$m" "$minor" "$patch"
    done
    echo ')'
    echo
    echo 'tool ('
    for b in "${K8S_BINARIES[@]}"; do
      printf '\tk8s.io/kubernetes/cmd/%s\n' "$b"
    done
    echo ')'
  } >"$src/go.mod"

  # Without these /version says v0.0.0-master, and helm checks chart kubeVersion against it.
  # The build date is the release's commit time from the proxy, so rebuilds are identical.
  local info build_date ldflags="-s -w" pkg
  info="${gomod%.mod}.info"
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null)" || true
  build_date="${build_date:-1970-01-01T00:00:00Z}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done

  local pkgs=()
  for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  local t0=$SECONDS
  _k8s_go_build "$src" "$K8S_BIN_DIR" "$ldflags" "" "${pkgs[@]}" >>"$logf" 2>&1 ||
    die k8s-build "$logf" "building Kubernetes v$K8S_VERSION failed"
  for b in "${K8S_BINARIES[@]}"; do
    [[ -x "$K8S_BIN_DIR/$b" ]] || die k8s-build "$logf" "build succeeded but $K8S_BIN_DIR/$b is missing"
  done
  log "Kubernetes v$K8S_VERSION built in $((SECONDS - t0))s"
}

# _k8s_build_locked: the builds under an exclusive lock, so two runs at once (two
# terminals, parallel test binaries) wait for each other instead of writing the same
# wrapper module; the second one then finds the binaries and skips. Only the build is
# locked: a daemon started while holding the lock would inherit it and keep it forever.
_k8s_build_locked() {
  local fd
  mkdir -p "$STREAMJOB_CACHE/k8s"
  exec {fd}>>"$STREAMJOB_CACHE/k8s/.build.lock"
  flock "$fd"
  _k8s_build_etcd
  _k8s_build_kube
  exec {fd}>&-
}

k8s_build() {
  _k8s_build_locked
  local b
  ln -sfn "$ETCD_BIN_DIR/etcd" "$STACK_BIN/etcd"
  for b in "${K8S_BINARIES[@]}"; do
    ln -sfn "$K8S_BIN_DIR/$b" "$STACK_BIN/$b"
  done
}

# ---------------------------------------------------------------------------------------
# Certificates and kubeconfigs
# ---------------------------------------------------------------------------------------

# _k8s_sign DIR NAME SUBJECT EXTENSIONS: key + certificate NAME signed by DIR/ca.
_k8s_sign() {
  local dir="$1" name="$2" subj="$3" ext="$4"
  printf '%s\n' "$ext" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >"$dir/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/$name.key" -subj "$subj" \
    -out "$dir/$name.csr" &&
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 3650 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" &&
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# _k8s_pki: CA, apiserver serving cert, admin and controller-manager client certs, and the
# service-account signing key pair. Generated once into a temp dir, then renamed into place.
_k8s_pki() {
  [[ -f "$K8S_PKI/sa.pub" ]] && return 0
  local logf="$STACK_LOGS/k8s-pki.log" tmp
  mkdir -p "$K8S_DIR"
  tmp="$(mktemp -d "$K8S_DIR/pki.tmp.XXXXXX")"
  log "generating Kubernetes certificates in $K8S_PKI"
  if ! (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/ca.key" -out "$tmp/ca.crt" \
      -days 3650 -sha256 -subj "/CN=streamjob-stack-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" &&
      _k8s_sign "$tmp" apiserver "/CN=kube-apiserver" \
        "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$K8S_SERVICE_IP" &&
      _k8s_sign "$tmp" admin "/O=system:masters/CN=streamjob-admin" \
        "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" &&
      _k8s_sign "$tmp" kube-controller-manager "/CN=system:kube-controller-manager" \
        "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" &&
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/sa.key" &&
      openssl pkey -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub"
  ) >"$logf" 2>&1; then
    rm -rf "$tmp"
    die k8s-pki "$logf" "openssl failed"
  fi
  rm -f "$tmp/ca.srl"
  chmod 755 "$tmp"
  chmod 644 "$tmp"/*.crt "$tmp/sa.pub"
  rm -rf "$K8S_PKI"
  mv "$tmp" "$K8S_PKI"
}

# _k8s_kubeconfig FILE USER CERT KEY: a kubeconfig with everything embedded.
_k8s_kubeconfig() {
  local file="$1" user="$2" cert="$3" key="$4"
  (
    umask 077
    cat >"$file.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: streamjob
  cluster:
    server: https://127.0.0.1:$K8S_API_PORT
    certificate-authority-data: $(base64 -w0 <"$K8S_PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: streamjob
  context:
    cluster: streamjob
    user: $user
    namespace: default
current-context: streamjob
KUBECONFIG
  ) && mv -f "$file.tmp" "$file"
}

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

_k8s_etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$K8S_ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

_k8s_apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$K8S_PKI/ca.crt" --cert "$K8S_PKI/admin.crt" \
    --key "$K8S_PKI/admin.key" "https://127.0.0.1:$K8S_API_PORT/readyz" >/dev/null 2>&1
}

_k8s_kcm_healthy() {
  # Self-signed serving cert; /healthz is on the always-allowed paths.
  curl -fsSk --max-time 3 "https://127.0.0.1:$K8S_KCM_PORT/healthz" >/dev/null 2>&1
}

_k8s_default_sa() {
  "$STACK_BIN/kubectl" --kubeconfig "$K8S_KUBECONFIG" get serviceaccount default \
    --namespace default >/dev/null 2>&1
}

# _k8s_port_free PORT: nothing listens on 127.0.0.1:PORT.
_k8s_port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# _k8s_wait NAME TIMEOUT COMMAND...: like wait_until, but give up at once (showing the
# log) when the process NAME died, instead of waiting out the timeout.
_k8s_wait() {
  local name="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout)) logf="$STACK_LOGS/$name.log"
  until "$@"; do
    pid_alive "$STREAMJOB_STATE/$name.pid" || die "$name" "$logf" "exited during startup"
    ((SECONDS < deadline)) || die "$name" "$logf" "not ready within ${timeout}s (waiting for: $*)"
    sleep 0.5
  done
}

# _k8s_start NAME PORT COMMAND...: start_daemon, but fail clearly when something else
# already holds the port (a leftover from another run would otherwise look "ready").
_k8s_start() {
  local name="$1" port="$2"
  shift 2
  pid_alive "$STREAMJOB_STATE/$name.pid" && return 0
  _k8s_port_free "$port" ||
    die "$name" "" "port 127.0.0.1:$port is in use by a process this stack did not start"
  start_daemon "$name" "$STACK_LOGS/$name.log" "$@"
}

k8s_up() {
  local p
  for p in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$STACK_BIN/$p" ]] || die k8s "" "$STACK_BIN/$p is missing: run k8s_build first"
  done
  mkdir -p "$K8S_DIR"
  _k8s_pki
  _k8s_kubeconfig "$K8S_KUBECONFIG" streamjob-admin "$K8S_PKI/admin.crt" "$K8S_PKI/admin.key"
  _k8s_kubeconfig "$K8S_KCM_KUBECONFIG" system:kube-controller-manager \
    "$K8S_PKI/kube-controller-manager.crt" "$K8S_PKI/kube-controller-manager.key"

  # etcd: single member on loopback. No fsync: the data is thrown away anyway and fsync
  # dominates apiserver latency on VM disks.
  _k8s_start etcd "$K8S_ETCD_CLIENT_PORT" "$STACK_BIN/etcd" \
    --name=streamjob \
    --data-dir="$K8S_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$K8S_ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$K8S_ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster="streamjob=http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --unsafe-no-fsync=true \
    --log-level=warn
  _k8s_wait etcd 60 _k8s_etcd_healthy

  _k8s_start kube-apiserver "$K8S_API_PORT" "$STACK_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$K8S_ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$K8S_API_PORT" \
    --tls-cert-file="$K8S_PKI/apiserver.crt" \
    --tls-private-key-file="$K8S_PKI/apiserver.key" \
    --client-ca-file="$K8S_PKI/ca.crt" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$K8S_PKI/sa.pub" \
    --service-account-signing-key-file="$K8S_PKI/sa.key" \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true
  _k8s_wait kube-apiserver 180 _k8s_apiserver_ready

  _k8s_start kube-controller-manager "$K8S_KCM_PORT" "$STACK_BIN/kube-controller-manager" \
    --kubeconfig="$K8S_KCM_KUBECONFIG" \
    --bind-address=127.0.0.1 \
    --secure-port="$K8S_KCM_PORT" \
    --leader-elect=false \
    --controllers='*,-node-lifecycle-controller' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$K8S_PKI/sa.key" \
    --root-ca-file="$K8S_PKI/ca.crt" \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
    --cluster-signing-cert-file="$K8S_PKI/ca.crt" \
    --cluster-signing-key-file="$K8S_PKI/ca.key" \
    --flex-volume-plugin-dir="$K8S_DIR/flexvolume"
  _k8s_wait kube-controller-manager 120 _k8s_kcm_healthy
  _k8s_wait kube-controller-manager 120 _k8s_default_sa
  log "Kubernetes v$K8S_VERSION is up: KUBECONFIG=$K8S_KUBECONFIG"
}

k8s_down() {
  local p
  for p in kube-controller-manager kube-apiserver etcd; do
    stop_daemon "$p"
  done
}

k8s_status() {
  local rc=0 p pidfile
  for p in etcd kube-apiserver kube-controller-manager; do
    pidfile="$STREAMJOB_STATE/$p.pid"
    if pid_alive "$pidfile"; then
      echo "$p: running (pid $(cat "$pidfile"))"
    else
      echo "$p: stopped"
      rc=1
    fi
  done
  if [[ -f "$K8S_PKI/admin.crt" ]] && _k8s_apiserver_ready; then
    echo "kube-apiserver: https://127.0.0.1:$K8S_API_PORT ready"
  else
    echo "kube-apiserver: https://127.0.0.1:$K8S_API_PORT not answering"
    rc=1
  fi
  return "$rc"
}

k8s_env() {
  printf 'export KUBECONFIG=%q\n' "$K8S_KUBECONFIG"
}
