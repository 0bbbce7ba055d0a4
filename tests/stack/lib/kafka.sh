# Kafka of the local test stack: one Apache Kafka 4.x node in KRaft mode (broker and
# controller in one JVM), assembled from the jars on Maven Central (no tarball is served).
# Sourced after common.sh, never run.
# shellcheck shell=bash

KAFKA_DIR="$STREAMJOB_CACHE/kafka/$KAFKA_VERSION"
KAFKA_STATE="$STREAMJOB_STATE/kafka"
KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
# Off: tests create their topics with the partition count they mean (tests/stack/kafka-topics),
# and a misspelt topic fails loudly instead of appearing with one partition.
KAFKA_AUTO_CREATE_TOPICS="${KAFKA_AUTO_CREATE_TOPICS:-false}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
# Maven's own default for this plugin is far older; pin a version that knows includeScope.
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
# Kafka's tools by short name (classes as shipped in kafka-tools / kafka_2.13 4.x).
declare -gA KAFKA_TOOL_CLASSES=(
  [topics]=org.apache.kafka.tools.TopicCommand
  [console-producer]=org.apache.kafka.tools.ConsoleProducer
  [console-consumer]=org.apache.kafka.tools.consumer.ConsoleConsumer
  [consumer-groups]=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
  [transactions]=org.apache.kafka.tools.TransactionsCommand
  [metadata-quorum]=org.apache.kafka.tools.MetadataQuorumCommand
  [cluster]=org.apache.kafka.tools.ClusterTool
  [get-offsets]=org.apache.kafka.tools.GetOffsetShell
  [storage]=kafka.tools.StorageTool
  [producer-perf]=org.apache.kafka.tools.ProducerPerformance
)
# The tools above that take --bootstrap-server (kafka_tool adds it for them).
KAFKA_TOOLS_WITH_BOOTSTRAP=" topics console-producer console-consumer consumer-groups transactions metadata-quorum cluster get-offsets "

_kafka_mvn() {
  # -U: retry artifacts whose earlier failure Maven cached in the local repository.
  mvn -B -q -U -Dstyle.color=never -Dmaven.repo.local="$STREAMJOB_CACHE/m2" "$@"
}

# _kafka_jar_version DIR ARTIFACT: the version of DIR/ARTIFACT-<version>.jar, if there is one.
_kafka_jar_version() {
  local f
  for f in "$1/$2"-[0-9]*.jar; do
    [[ -e "$f" ]] || continue
    f="${f##*/"$2"-}"
    echo "${f%.jar}"
    return 0
  done
}

kafka_build() {
  local logfile="$STACK_LOGS/kafka-build.log"
  if [[ -f "$KAFKA_DIR/libs/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
    return 0
  fi
  log "kafka: resolving Apache Kafka $KAFKA_VERSION jars with Maven (log: $logfile)"
  mkdir -p "$STREAMJOB_CACHE/kafka" "$STREAMJOB_CACHE/m2"
  local tmp
  tmp="$(mktemp -d "$STREAMJOB_CACHE/kafka/.build-$KAFKA_VERSION.XXXXXX")"
  mkdir -p "$tmp/libs" "$tmp/config"
  # A throwaway pom whose only job is to name the server and the admin tools.
  cat >"$tmp/pom.xml" <<EOF
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streamjob.stack</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  {
    echo "== copy-dependencies of kafka_2.13 + kafka-tools $KAFKA_VERSION"
    _kafka_mvn -f "$tmp/pom.xml" "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp/libs"
  } >"$logfile" 2>&1 || { rm -rf "$tmp"; die kafka "$logfile" "Maven could not resolve Kafka $KAFKA_VERSION"; }

  # Kafka declares slf4j-api and log4j-core but no binding between them: add the one that
  # matches the slf4j-api that came in (1.x: log4j-slf4j-impl, 2.x: log4j-slf4j2-impl), at
  # the log4j version Kafka itself brought.
  local slf4j log4j binding jar
  slf4j="$(_kafka_jar_version "$tmp/libs" slf4j-api)"
  log4j="$(_kafka_jar_version "$tmp/libs" log4j-api)"
  case "$slf4j" in
    1.*) binding="log4j-slf4j-impl" ;;
    *) binding="log4j-slf4j2-impl" ;;
  esac
  local artifacts=("org.apache.logging.log4j:$binding:${log4j:-$LOG4J_VERSION}")
  [[ -n "$log4j" ]] || artifacts+=("org.apache.logging.log4j:log4j-api:$LOG4J_VERSION")
  [[ -n "$(_kafka_jar_version "$tmp/libs" log4j-core)" ]] ||
    artifacts+=("org.apache.logging.log4j:log4j-core:${log4j:-$LOG4J_VERSION}")
  for jar in "${artifacts[@]}"; do
    {
      echo "== copy $jar (slf4j-api ${slf4j:-none})"
      _kafka_mvn -f "$tmp/pom.xml" "$MAVEN_DEPENDENCY_PLUGIN:copy" \
        -Dartifact="$jar" -DoutputDirectory="$tmp/libs"
    } >>"$logfile" 2>&1 || { rm -rf "$tmp"; die kafka "$logfile" "Maven could not resolve $jar"; }
  done

  # Server: everything to stdout (the daemon's log file); tools: warnings only, to stderr,
  # so their stdout stays machine-readable.
  cat >"$tmp/config/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.auth.name = kafka.authorizer.logger
logger.auth.level = WARN
EOF
  cat >"$tmp/config/tools-log4j2.properties" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
  rm -f "$tmp/pom.xml"
  rm -rf "$KAFKA_DIR"
  mv "$tmp" "$KAFKA_DIR" || die kafka "$logfile" "could not move $tmp into place"
  local jars=("$KAFKA_DIR"/libs/*.jar)
  log "kafka: ${#jars[@]} jars in $KAFKA_DIR/libs"
}

# kafka_tool NAME|CLASS ARGS...: run one of Kafka's command-line tools against the local
# broker. For the short names in KAFKA_TOOLS_WITH_BOOTSTRAP, --bootstrap-server is added
# unless given; other tools and full class names get their arguments as they are.
kafka_tool() {
  local name="$1"
  shift
  local class="${KAFKA_TOOL_CLASSES[$name]:-$name}"
  local args=("$@")
  if [[ "$KAFKA_TOOLS_WITH_BOOTSTRAP" == *" $name "* && " $* " != *" --bootstrap-server "* ]]; then
    args=(--bootstrap-server "$KAFKA_BOOTSTRAP" "${args[@]}")
  fi
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$KAFKA_DIR/config/tools-log4j2.properties" \
    -cp "$KAFKA_DIR/libs/*" "$class" "${args[@]}"
}

_kafka_write_config() {
  cat >"$KAFKA_STATE/server.properties" <<EOF
# Written by tests/stack/lib/kafka.sh: a single KRaft node, broker and controller in one.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_STATE/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=$KAFKA_AUTO_CREATE_TOPICS
delete.topic.enable=true
# One broker: the internal topics cannot have the default three replicas.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
# Tests join consumer groups often: do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
# Small machine: fewer threads and a small log-cleaner buffer (default 128 MiB of the heap).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
EOF
}

# _kafka_listening: something accepts TCP connections on the broker port.
_kafka_listening() {
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null
}

# _kafka_started_or_dead OFFSET: the JVM is gone, or the log from byte OFFSET on says the
# server started and the port accepts connections.
_kafka_started_or_dead() {
  ! pid_alive "$STREAMJOB_STATE/kafka.pid" ||
    { tail -c "+$1" "$STACK_LOGS/kafka.log" | grep -q 'Kafka Server started' && _kafka_listening; }
}

kafka_up() {
  local logfile="$STACK_LOGS/kafka.log" pidfile="$STREAMJOB_STATE/kafka.pid"
  mkdir -p "$KAFKA_STATE/data"
  if pid_alive "$pidfile"; then
    log "kafka: already running (pid $(cat "$pidfile"))"
    wait_until kafka "$logfile" 120 _kafka_listening
    return 0
  fi
  if _kafka_listening; then
    die kafka "" "something else already listens on $KAFKA_BOOTSTRAP"
  fi
  _kafka_write_config
  if [[ ! -f "$KAFKA_STATE/data/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(kafka_tool storage random-uuid 2>>"$logfile")" ||
      die kafka "$logfile" "StorageTool random-uuid failed"
    kafka_tool storage format -t "$cluster_id" -c "$KAFKA_STATE/server.properties" \
      --ignore-formatted >>"$logfile" 2>&1 ||
      die kafka "$logfile" "StorageTool format failed"
  fi
  local start_offset
  start_offset=$(($(stat -c %s "$logfile" 2>/dev/null || echo 0) + 1))
  log "kafka: starting Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP (log: $logfile)"
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several options
  start_daemon kafka "$logfile" java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" \
    -cp "$KAFKA_DIR/libs/*" kafka.Kafka "$KAFKA_STATE/server.properties"
  # Ready when the server says it started (or it died: checked right after).
  wait_until kafka "$logfile" 180 _kafka_started_or_dead "$start_offset"
  pid_alive "$pidfile" || die kafka "$logfile" "the Kafka JVM exited during start-up"
  # One real metadata round trip through the admin client.
  kafka_tool topics --list >/dev/null 2>>"$logfile" ||
    die kafka "$logfile" "the broker does not answer a topic list"
  log "kafka: up on $KAFKA_BOOTSTRAP"
}

kafka_down() {
  stop_daemon kafka
}

kafka_status() {
  if pid_alive "$STREAMJOB_STATE/kafka.pid" && _kafka_listening; then
    echo "kafka: up (Kafka $KAFKA_VERSION KRaft, $KAFKA_BOOTSTRAP, pid $(cat "$STREAMJOB_STATE/kafka.pid"))"
  else
    echo "kafka: down"
    return 1
  fi
}

kafka_env() {
  printf 'export %s=%q\n' STREAMJOB_KAFKA_BOOTSTRAP "$KAFKA_BOOTSTRAP"
}
