# S3 server of the local test stack: versitygw (Apache-2.0) with its POSIX backend, built from
# the Go module proxy. Sourced after common.sh, never run.
# shellcheck shell=bash

S3_HOST=127.0.0.1
S3_PORT=7070
S3_ENDPOINT="http://$S3_HOST:$S3_PORT"
S3_ACCESS_KEY=streamjob
S3_SECRET_KEY=streamjob-secret
S3_REGION=us-east-1
S3_BUCKET=streamjob
S3_BIN_DIR="$STREAMJOB_CACHE/versitygw/$VERSITYGW_VERSION"
S3_STATE="$STREAMJOB_STATE/s3"

s3_build() {
  local out="$S3_BIN_DIR/versitygw" logfile="$STACK_LOGS/s3-build.log"
  if [[ ! -x "$out" ]]; then
    log "s3: building versitygw v$VERSITYGW_VERSION (log: $logfile)"
    mkdir -p "$S3_BIN_DIR"
    local tmp
    tmp="$(mktemp -d "$S3_BIN_DIR/.build.XXXXXX")"
    # The module has no replace directives, so `go install pkg@version` builds it as released.
    if ! (cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 \
      go install -trimpath -ldflags "-s -w -X main.Version=v$VERSITYGW_VERSION" \
      "github.com/versity/versitygw/cmd/versitygw@v$VERSITYGW_VERSION") >"$logfile" 2>&1; then
      rm -rf "$tmp"
      die s3 "$logfile" "go install of versitygw v$VERSITYGW_VERSION failed"
    fi
    mv -f "$tmp/versitygw" "$out"
    rm -rf "$tmp"
  fi
  ln -sfn "$out" "$STACK_BIN/versitygw"
}

# s3_curl ARGS...: curl with SigV4 signing as the stack's root user (curl >= 7.75 signs by
# itself; versitygw insists on x-amz-content-sha256, which this curl does not add).
s3_curl() {
  curl -s --max-time 10 --aws-sigv4 "aws:amz:$S3_REGION:s3" \
    --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

# _s3_answers: a signed ListBuckets succeeds (server up and the root credentials accepted).
_s3_answers() {
  s3_curl --max-time 2 "$S3_ENDPOINT/" 2>/dev/null | grep -q '<ListAllMyBucketsResult'
}

# s3_create_bucket NAME: create a bucket through the S3 API (so the gateway records its owner
# and ACL); an existing bucket of ours is fine.
s3_create_bucket() {
  local out
  out="$(s3_curl -w '\n%{http_code}' -X PUT "$S3_ENDPOINT/$1")" || return 1
  case "${out##*$'\n'}" in
    200) return 0 ;;
    409) [[ "$out" == *BucketAlreadyOwnedByYou* ]] && return 0 ;;
  esac
  printf '%s\n' "$out" >&2
  return 1
}

_s3_answers_or_dead() { ! pid_alive "$STREAMJOB_STATE/s3.pid" || _s3_answers; }

s3_up() {
  local logfile="$STACK_LOGS/s3.log" pidfile="$STREAMJOB_STATE/s3.pid"
  mkdir -p "$S3_STATE/data"
  if ! pid_alive "$pidfile"; then
    if curl -s --max-time 2 -o /dev/null "$S3_ENDPOINT/"; then
      die s3 "" "something else already answers on $S3_ENDPOINT"
    fi
    log "s3: starting versitygw v$VERSITYGW_VERSION on $S3_ENDPOINT (log: $logfile)"
    # Root credentials through the environment keeps them off the process list.
    ROOT_ACCESS_KEY="$S3_ACCESS_KEY" ROOT_SECRET_KEY="$S3_SECRET_KEY" \
      start_daemon s3 "$logfile" "$S3_BIN_DIR/versitygw" \
      --port "$S3_HOST:$S3_PORT" --region "$S3_REGION" \
      posix "$S3_STATE/data"
  fi
  wait_until s3 "$logfile" 60 _s3_answers_or_dead
  pid_alive "$pidfile" || die s3 "$logfile" "versitygw exited during start-up"
  s3_create_bucket "$S3_BUCKET" 2>>"$logfile" || die s3 "$logfile" "could not create bucket $S3_BUCKET"
  log "s3: up on $S3_ENDPOINT, bucket '$S3_BUCKET'"
}

s3_down() {
  stop_daemon s3
}

s3_status() {
  if pid_alive "$STREAMJOB_STATE/s3.pid" && _s3_answers; then
    echo "s3: up (versitygw v$VERSITYGW_VERSION, $S3_ENDPOINT, bucket $S3_BUCKET)"
  else
    echo "s3: down"
    return 1
  fi
}

s3_env() {
  printf 'export %s=%q\n' \
    AWS_ACCESS_KEY_ID "$S3_ACCESS_KEY" \
    AWS_SECRET_ACCESS_KEY "$S3_SECRET_KEY" \
    AWS_REGION "$S3_REGION" \
    AWS_DEFAULT_REGION "$S3_REGION" \
    AWS_ENDPOINT "$S3_ENDPOINT" \
    AWS_ENDPOINT_URL "$S3_ENDPOINT" \
    AWS_ALLOW_HTTP true \
    STREAMJOB_S3_BUCKET "$S3_BUCKET"
}
