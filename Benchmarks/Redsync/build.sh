#!/bin/sh
# Builds redsync-bench (main.go) against a Redsync source tree, offline, with Debian's Go and
# Debian's redigo, go-multierror and errwrap sources:
#
#   apt-get install -y golang-go golang-github-gomodule-redigo-dev \
#       golang-github-hashicorp-go-multierror-dev golang-github-hashicorp-errwrap-dev
#   git clone --branch v4.13.0 https://github.com/go-redsync/redsync /path/to/redsync   # or a mirror
#   Benchmarks/Redsync/build.sh /path/to/redsync /tmp/redsync-bench
#   /tmp/redsync-bench -nodes 127.0.0.1:7711,…,127.0.0.1:7715 -mode cycle -duration 3s
#
# Only Redsync's core package and its redigo adapter are compiled. Debian's redigo declares a
# test-only requirement on testify, which is not packaged: an empty module stands in for it.
set -eu
source=$(cd "$1" && pwd)
output=$2
here=$(cd "$(dirname "$0")" && pwd)
gocode=/usr/share/gocode/src
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/testify"
printf 'module github.com/stretchr/testify\n\ngo 1.19\n' > "$work/testify/go.mod"
cp "$here/main.go" "$work/main.go"
cat > "$work/go.mod" <<MOD
module redsync-bench

go 1.19

require (
	github.com/go-redsync/redsync/v4 v4.13.0
	github.com/gomodule/redigo v1.8.9
	github.com/hashicorp/errwrap v1.1.0
	github.com/hashicorp/go-multierror v1.1.1
)

replace (
	github.com/go-redsync/redsync/v4 => $source
	github.com/gomodule/redigo => $gocode/github.com/gomodule/redigo
	github.com/hashicorp/errwrap => $gocode/github.com/hashicorp/errwrap
	github.com/hashicorp/go-multierror => $gocode/github.com/hashicorp/go-multierror
	github.com/stretchr/testify => $work/testify
)
MOD
cd "$work"
GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod go build -p 1 -o "$output" .
