#!/bin/sh
# Writes pgbouncer.ini and the user list from PGBOUNCER_* variables, then runs pgbouncer.
set -eu
: "${PGBOUNCER_TARGET_HOST:?}" "${PGBOUNCER_DATABASE:?}" "${PGBOUNCER_USER:?}" "${PGBOUNCER_PASSWORD:?}"
dir=/tmp/pgbouncer
umask 077
mkdir -p "$dir"
# userlist.txt: "user" "password", a double quote inside doubled
user=$(printf '%s' "$PGBOUNCER_USER" | sed 's/"/""/g')
password=$(printf '%s' "$PGBOUNCER_PASSWORD" | sed 's/"/""/g')
printf '"%s" "%s"\n' "$user" "$password" > "$dir/userlist.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
${PGBOUNCER_DATABASE} = host=${PGBOUNCER_TARGET_HOST} port=${PGBOUNCER_TARGET_PORT:-5432} dbname=${PGBOUNCER_DATABASE}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = ${PGBOUNCER_DEFAULT_POOL_SIZE:-40}
max_client_conn = ${PGBOUNCER_MAX_CLIENT_CONN:-1000}
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
server_connect_timeout = 5
# after a failed server login (PostgreSQL restarting) refuse clients for 1 s, not 15
# (docs/scale-results.md: a PostgreSQL restart costs 2-3 s instead of 15-25 s)
server_login_retry = ${PGBOUNCER_SERVER_LOGIN_RETRY:-1}
query_wait_timeout = 30
logfile =
pidfile =
INI
exec pgbouncer "$dir/pgbouncer.ini"
