#!/usr/bin/env sh
# Creates deploy/.env from deploy/.env.example on the first `make up`, with every "change-me"
# secret replaced by a fresh random one (each placeholder gets the same value wherever it
# appears, so the broker and database accounts match their URLs). An existing .env is kept.
#
# The new .env is a demo (SOUDAN_DEMO=true): the fake LINE platform (compose profile "demo")
# stands in for LINE with its own fresh channel secret and token, and the console gets a first
# admin with a fresh password (it must be changed at the first sign-in), over plain http on
# 127.0.0.1 (CONSOLE_DEVELOPMENT=true). To go live, edit deploy/.env as README "Going live"
# says: SOUDAN_DEMO=false, the real LINE channel secret and access token, LINE_API_BASE_URL.
#
#   sh deploy/init-env.sh            create deploy/.env if there is none
#   sh deploy/init-env.sh --sign-in  print the demo console address and sign-in (demo only)
set -eu
here=$(dirname "$0")
env_file="$here/.env"

value_of() {
    sed -n "s/^$1=//p" "$env_file" | tail -n 1
}

if [ "${1:-}" = "--sign-in" ]; then
    [ -f "$env_file" ] || exit 0
    [ "$(value_of SOUDAN_DEMO)" = "true" ] || exit 0
    echo
    echo "Soudan demo: console http://127.0.0.1:8081/login"
    echo "  admin: $(value_of CONSOLE_ADMIN_EMAIL) / $(value_of CONSOLE_ADMIN_PASSWORD)"
    echo "  (the first sign-in asks for a new password; add counselors at /admin/staff)"
    echo "  what the fake LINE platform delivered: http://127.0.0.1:9000/fake/v1/stats"
    echo "  another scripted student: docker compose --env-file deploy/.env --profile demo run --rm students"
    exit 0
fi

[ -f "$env_file" ] && exit 0
umask 077
cp "$here/.env.example" "$env_file"
random() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}
for name in rabbitmq-password mongodb-password log-hash-key erlang-cookie; do
    sed -i "s/change-me-$name/$(random 24)/g" "$env_file"
done
sed -i "s/change-me-mongodb-replica-key/$(random 48)/g" "$env_file"
sed -i \
    -e "s/^SOUDAN_DEMO=.*/SOUDAN_DEMO=true/" \
    -e "s|^LINE_API_BASE_URL=.*|LINE_API_BASE_URL=http://fakeline:9000|" \
    -e "s/^LINE_CHANNEL_SECRET=.*/LINE_CHANNEL_SECRET=demo-$(random 16)/" \
    -e "s/^LINE_CHANNEL_ACCESS_TOKEN=.*/LINE_CHANNEL_ACCESS_TOKEN=demo-$(random 24)/" \
    -e "s/^# CONSOLE_ADMIN_EMAIL=.*/CONSOLE_ADMIN_EMAIL=admin@demo.soudan.example/" \
    -e "s/^# CONSOLE_ADMIN_PASSWORD=.*/CONSOLE_ADMIN_PASSWORD=demo-$(random 8)/" \
    -e "s/^# CONSOLE_SESSION_SECRET=.*/CONSOLE_SESSION_SECRET=$(random 32)/" \
    -e "s/^# CONSOLE_DEVELOPMENT=.*/CONSOLE_DEVELOPMENT=true/" \
    "$env_file"
echo "created $env_file with fresh secrets, as a demo with a fake LINE platform" \
    "(README \"Going live\" for real LINE credentials)"
