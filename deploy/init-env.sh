#!/usr/bin/env sh
# Creates deploy/.env from deploy/.env.example on the first `make up`, with every "change-me"
# secret replaced by a fresh random one (each placeholder gets the same value wherever it
# appears, so the broker and database accounts match their URLs). An existing .env is kept.
# The LINE channel secret and access token stay placeholders: set them from the LINE
# Developers console before LINE can reach the stack.
set -eu
here=$(dirname "$0")
env_file="$here/.env"
[ -f "$env_file" ] && exit 0
umask 077
cp "$here/.env.example" "$env_file"
for name in rabbitmq-password mongodb-password log-hash-key; do
    value=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    sed -i "s/change-me-$name/$value/g" "$env_file"
done
echo "created $env_file with fresh secrets; set LINE_CHANNEL_SECRET and LINE_CHANNEL_ACCESS_TOKEN in it"
