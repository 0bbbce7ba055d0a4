# Argo CD health-check runner of the local test stack: tests/lua (lua-health), a small Go
# program that runs gitops/argocd/health.lua in gopher-lua (MIT) the way Argo CD does. Built
# from the Go module proxy; a client, so up and down do nothing. Sourced after common.sh,
# never run.
# shellcheck shell=bash

LUA_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../lua" && pwd)"
LUA_CACHE="$STREAMJOB_CACHE/lua-health"

# _lua_key: gopher-lua version plus a hash of the runner's sources, so a changed main.go or
# go.sum rebuilds while an unchanged checkout reuses the cached binary.
_lua_key() {
  local sum
  sum="$(cat "$LUA_SRC/go.mod" "$LUA_SRC/go.sum" "$LUA_SRC/main.go" | sha256sum)"
  printf 'v%s-%s' "$GOPHER_LUA_VERSION" "${sum:0:12}"
}

_lua_bin() {
  printf '%s/%s/lua-health' "$LUA_CACHE" "$(_lua_key)"
}

lua_build() {
  local out logfile="$STACK_LOGS/lua-build.log"
  out="$(_lua_bin)"
  # go.mod (with the committed go.sum) is what the build uses; versions.env must name it.
  awk -v v="v$GOPHER_LUA_VERSION" '
    ($1 == "require" && $2 == "github.com/yuin/gopher-lua" && $3 == v) ||
      ($1 == "github.com/yuin/gopher-lua" && $2 == v) { found = 1 }
    END { exit !found }' "$LUA_SRC/go.mod" ||
    die lua "" "tests/lua/go.mod does not require gopher-lua v$GOPHER_LUA_VERSION (versions.env)"
  if [[ ! -x "$out" ]]; then
    log "lua: building lua-health with gopher-lua v$GOPHER_LUA_VERSION (log: $logfile)"
    mkdir -p "${out%/*}"
    local tmp
    tmp="$(mktemp -d "${out%/*}/.build.XXXXXX")"
    # -mod=readonly: go.sum is committed, so the build never rewrites the checkout.
    # -buildvcs=false: the module sits inside this git checkout, whose state is no concern.
    if ! (cd "$LUA_SRC" && GOWORK=off CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
      -trimpath -ldflags "-s -w" -o "$tmp/lua-health" .) >"$logfile" 2>&1; then
      rm -rf "$tmp"
      die lua "$logfile" "go build of lua-health (gopher-lua v$GOPHER_LUA_VERSION) failed"
    fi
    mv -f "$tmp/lua-health" "$out"
    rm -rf "$tmp"
  fi
  ln -sfn "$out" "$STACK_BIN/lua-health"
}

lua_up() {
  :
}

lua_down() {
  :
}

lua_status() {
  if [[ -x "$(_lua_bin)" ]]; then
    echo "lua-health: built (gopher-lua v$GOPHER_LUA_VERSION)"
  else
    echo "lua-health: not built"
    return 1
  fi
}

# The binary built from this checkout's sources (the PATH link may come from another one).
lua_env() {
  printf 'export %s=%q\n' STREAMJOB_LUA_HEALTH "$(_lua_bin)"
}
