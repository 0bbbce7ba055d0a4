# helm of the local test stack, built from the Go module proxy. helm is a client: up and down
# only prepare its directories. Sourced after common.sh, never run.
# shellcheck shell=bash

HELM_MAJOR="${HELM_VERSION%%.*}"
HELM_MODULE="helm.sh/helm/v$HELM_MAJOR"
HELM_BIN_DIR="$STREAMJOB_CACHE/helm/$HELM_VERSION"
HELM_STATE="$STREAMJOB_STATE/helm"

helm_build() {
  local out="$HELM_BIN_DIR/helm" logfile="$STACK_LOGS/helm-build.log"
  if [[ ! -x "$out" ]]; then
    log "helm: building helm v$HELM_VERSION (log: $logfile)"
    mkdir -p "$HELM_BIN_DIR"
    local tmp gomod k8s_minor
    tmp="$(mktemp -d "$HELM_BIN_DIR/.build.XXXXXX")"
    # Stamp what the release Makefile stamps: the version (else `helm version` prints the
    # bare minor with "+unreleased"), and the Kubernetes version of the client-go it was built
    # with (else `helm template` assumes Kubernetes 1.20 for .Capabilities and kubeVersion).
    {
      gomod="$(cd "$tmp" && go mod download -json "$HELM_MODULE@v$HELM_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
      k8s_minor="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)"
      echo "client-go minor: ${k8s_minor:-unknown}"
      local ldflags="-s -w -X $HELM_MODULE/internal/version.version=v$HELM_VERSION"
      ldflags+=" -X $HELM_MODULE/internal/version.metadata= -X $HELM_MODULE/internal/version.gitTreeState=clean"
      if [[ -n "$k8s_minor" ]]; then
        local pkg
        for pkg in pkg/lint/rules pkg/chartutil; do
          ldflags+=" -X $HELM_MODULE/$pkg.k8sVersionMajor=1 -X $HELM_MODULE/$pkg.k8sVersionMinor=$k8s_minor"
        done
      fi
      echo "ldflags: $ldflags"
      (cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
        "$HELM_MODULE/cmd/helm@v$HELM_VERSION")
    } >"$logfile" 2>&1 || { rm -rf "$tmp"; die helm "$logfile" "go install of helm v$HELM_VERSION failed"; }
    mv -f "$tmp/helm" "$out"
    rm -rf "$tmp"
  fi
  ln -sfn "$out" "$STACK_BIN/helm"
}

helm_up() {
  mkdir -p "$HELM_STATE/cache" "$HELM_STATE/config" "$HELM_STATE/data"
}

helm_down() {
  :
}

helm_status() {
  if [[ -x "$HELM_BIN_DIR/helm" ]]; then
    echo "helm: $("$HELM_BIN_DIR/helm" version --short 2>/dev/null)"
  else
    echo "helm: not built"
    return 1
  fi
}

# Keep helm's repositories, cache and plugins inside the stack's state, not in $HOME.
helm_env() {
  printf 'export %s=%q\n' \
    HELM_CACHE_HOME "$HELM_STATE/cache" \
    HELM_CONFIG_HOME "$HELM_STATE/config" \
    HELM_DATA_HOME "$HELM_STATE/data"
}
