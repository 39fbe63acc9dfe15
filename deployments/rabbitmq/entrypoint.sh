#!/bin/sh
# Writes TaskFlow's broker user (AMQP_USER / AMQP_PASSWORD from deployments/.env) as a definitions
# file beside the committed topology, then runs the image's own entrypoint ("$@").
#
# Why a file and not RABBITMQ_DEFAULT_USER: when definitions are imported at boot (rabbitmq.conf's
# load_definitions), RabbitMQ creates no default user, so the user must be among the definitions;
# and no secret is committed, so this file is made here, from the environment, at every start.
set -eu

: "${AMQP_USER:?set AMQP_USER in deployments/.env}"
: "${AMQP_PASSWORD:?set AMQP_PASSWORD in deployments/.env}"
dir="${TASKFLOW_DEFINITIONS_DIR:-/etc/rabbitmq/definitions.d}"

json_string() {
  # A JSON string literal: backslashes and double quotes escaped.
  printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

user=$(json_string "$AMQP_USER")
password=$(json_string "$AMQP_PASSWORD")
mkdir -p "$dir"
umask 077
cat > "$dir/20-users.json" <<JSON
{
  "vhosts": [{"name": "/"}],
  "users": [{"name": $user, "password": $password, "tags": "administrator"}],
  "permissions": [
    {"user": $user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
JSON
# The image's entrypoint drops to the rabbitmq user, which must read the file.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
  chown rabbitmq "$dir/20-users.json"
fi

exec "$@"
