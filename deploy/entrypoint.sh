#!/usr/bin/env bash
# Run gunicorn on loopback and nginx in front of it (deploy/nginx.conf says why).
# Stops both on SIGTERM/SIGINT, and exits as soon as either one dies, so the container's
# restart policy brings back the pair instead of leaving half a service running.
#
# Environment (defaults are the Docker image's):
#   NGINX_PORT              public port nginx listens on (8000)
#   NGINX_LISTEN            the full `listen` value, if more than a port is needed
#   CONVERT_WEBHOOKS_BIND   gunicorn's bind, nginx's upstream (127.0.0.1:8001; unix:/path works)
#   NGINX_RUNTIME_DIR       writable: rendered config, pid file, temp files
#   NGINX_ACCESS_LOG        nginx's access log (/dev/stdout, else the runtime dir's access.log)
#   GUNICORN, NGINX         the commands to run (gunicorn, nginx from PATH)
set -euo pipefail
set -m # each child in its own process group, so its leftovers can be signalled as a group
cd "$(dirname "$0")/.."

export CONVERT_WEBHOOKS_BIND=${CONVERT_WEBHOOKS_BIND:-127.0.0.1:8001}
listen=${NGINX_LISTEN:-${NGINX_PORT:-8000}}
runtime=${NGINX_RUNTIME_DIR:-/tmp/convert-webhooks-nginx}
access_log=${NGINX_ACCESS_LOG:-/dev/stdout}
if [ ! -w "$access_log" ] && [ -e "$access_log" ]; then
  # e.g. /dev/stdout is a pipe or file of another user (Docker hands it to the container's)
  echo "convert-webhooks: cannot write $access_log: nginx access log in $runtime/access.log" >&2
  access_log=$runtime/access.log
fi
gunicorn=${GUNICORN:-gunicorn}
nginx=${NGINX:-nginx}

# Render the template: only its placeholders, verbatim (nginx's own $variables stay).
mkdir -p "$runtime"
sed -e "s|\${NGINX_LISTEN}|${listen}|g" \
  -e "s|\${NGINX_UPSTREAM}|${CONVERT_WEBHOOKS_BIND}|g" \
  -e "s|\${NGINX_ACCESS_LOG}|${access_log}|g" \
  deploy/nginx.conf >"$runtime/nginx.conf"
"$nginx" -t -q -p "$runtime/" -c "$runtime/nginx.conf" -e stderr

gunicorn_pid=""
nginx_pid=""
stopping=0

stop() {
  stopping=1
  trap '' TERM INT # a second signal must not restart the sequence
  # nginx first (SIGQUIT: stop accepting, finish open requests), then gunicorn (SIGTERM:
  # graceful), so no request reaches a gunicorn that is already going away. nginx's graceful
  # stop also waits for clients still sending headers (up to client_header_timeout), so it
  # gets 5 s before a fast stop: all of it stays inside Docker's default 10 s.
  end "$nginx_pid" QUIT 5
  end "$gunicorn_pid" TERM 25
}

end() {
  # end PID SIGNAL SECONDS: signal the process, give it SECONDS to go, then end its group
  # (workers left behind by a master that died, or one that did not stop in time).
  [ -n "$1" ] || return 0
  kill "-$2" "$1" 2>/dev/null || true
  gone_within "$1" "$3" || kill -TERM "$1" 2>/dev/null || true
  gone_within "$1" 3 || kill -KILL "$1" 2>/dev/null || true
  kill -TERM -- "-$1" 2>/dev/null || true
}

gone_within() {
  # bash reaps its children as they exit, so `kill -0` fails once the process is gone.
  local ticks=$(($2 * 10))
  while kill -0 "$1" 2>/dev/null && [ "$ticks" -gt 0 ]; do
    sleep 0.1
    ticks=$((ticks - 1))
  done
  ! kill -0 "$1" 2>/dev/null
}

trap 'stop' TERM INT

"$gunicorn" -c gunicorn.conf.py wsgi:app &
gunicorn_pid=$!
"$nginx" -p "$runtime/" -c "$runtime/nginx.conf" -e stderr &
nginx_pid=$!
echo "convert-webhooks: nginx on ${listen} -> gunicorn on ${CONVERT_WEBHOOKS_BIND}" >&2
if [ "$stopping" = 1 ]; then # the signal came before both had started
  stop
  exit 0
fi

# Returns when either child exits or a trapped signal has run stop().
status=0
wait -n "$gunicorn_pid" "$nginx_pid" || status=$?
if [ "$stopping" = 0 ]; then
  echo "convert-webhooks: a process exited (status $status): stopping the other" >&2
  stop
  exit $((status == 0 ? 1 : status))
fi
exit 0
