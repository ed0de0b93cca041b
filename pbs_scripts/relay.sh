#!/bin/bash
# relay.sh: the job-side helper of hpc-relay. The relay pastes this file into every job script
# after the template's #PBS lines, so it runs before the template body. It sends "started" on
# load, and the template then reports through these functions:
#
#   relay_log TEXT...             send a log line, the arguments joined with spaces
#   relay_progress PERCENT [MSG]  send progress, PERCENT being a number from 0 to 100
#   relay_token TEXT              send one token of streamed text
#   relay_result JSON             send a result, the JSON text as given
#   relay_chunk FILE [MIME]       send the bytes of FILE (default MIME application/octet-stream)
#   relay_complete [JSON]         send the terminal "complete" event (default data null)
#   relay_fatal MESSAGE...        send the terminal "fatal" event, then exit the script with 1
#   relay_event TYPE JSON         send an event of any type
#   relay_arg NAME                print one argument: a string as is with no newline added,
#                                 another value as JSON, nothing (and return 1) if it is missing
#   relay_args                    print the arguments as the JSON object the relay sent
#   relay_json_string TEXT        print TEXT as a JSON string literal
#
# The send functions return 0 once the relay accepted the event, or when it responded 409
# because the job is already finished. Otherwise they print the reason on stderr and return
# non-zero. Only relay_fatal exits the script. Usage errors return 2.
#
# Only one terminal event is sent. If the script exits without one, the EXIT trap sends fatal
# with the exit status. SIGTERM (qdel, walltime limit), SIGINT and SIGHUP send fatal with
# 128 + the signal number and exit with that status. A template that sets its own EXIT, TERM,
# INT or HUP trap, or replaces the shell with exec, loses these events.
#
# RELAY_SCRATCH is a private folder for the template's own files, removed on exit.
# $(relay_arg NAME) drops trailing newlines, as every command substitution does.
# NOTE: tested only with bash 5.2 and curl 7.88. -H @FILE needs curl 7.55 or later.

# A script started outside the relay stops here with a clear message.
for _relay_variable in RELAY_URL RELAY_JOB_ID RELAY_TOKEN; do
    if [[ -z ${!_relay_variable:-} ]]; then
        printf 'relay.sh: %s is not set. Submit this job through the relay, which sets RELAY_URL, RELAY_JOB_ID, RELAY_TOKEN and RELAY_ARGS.\n' \
            "$_relay_variable" >&2
        exit 2
    fi
done
unset _relay_variable
RELAY_URL=${RELAY_URL%/}
for _relay_command in curl flock mktemp; do
    if ! command -v "$_relay_command" >/dev/null; then
        printf 'relay.sh: %s not found in PATH (%s). Install it on the compute nodes or add its folder to PATH.\n' \
            "$_relay_command" "$PATH" >&2
        exit 2
    fi
done
unset _relay_command

# The counter, the terminal flag and the lock live in files, not variables, because pipelines
# and command substitutions run in subshells whose variables die with them.
if ! _relay_dir=$(mktemp -d "${TMPDIR:-/tmp}/relay-job.XXXXXXXXXX"); then
    printf 'relay.sh: cannot create a temp folder in %s. Set TMPDIR to a writable folder.\n' \
        "${TMPDIR:-/tmp}" >&2
    exit 2
fi
chmod 700 "$_relay_dir"
# The arguments are read from a file, not the environment: Linux refuses to start any
# program whose environment contains a string over 128 KiB, so large arguments stay a shell
# variable and are exported only when small, for Python steps that read os.environ.
printf '%s' "${RELAY_ARGS:-}" >|"$_relay_dir/args"
if ((${#RELAY_ARGS} <= 65536)); then
    export RELAY_ARGS
else
    export -n RELAY_ARGS
fi
_relay_main_pid=$BASHPID
RELAY_SCRATCH=$_relay_dir/scratch
mkdir -m 700 "$RELAY_SCRATCH"
# The helper writes with >| and >> because a template's set -o noclobber would reject >.
printf '0\n' >|"$_relay_dir/last_id"

# curl reads the header from this file, so the token never appears in a command line, which
# any user on the node can read with ps. xtrace is off here so that bash -x does not print it.
(
    set +x
    umask 077
    printf 'Authorization: Bearer %s\n' "$RELAY_TOKEN" >|"$_relay_dir/auth_header"
)

# JSON escapes of the control characters other than \t, \n and \r.
_relay_control_chars=()
_relay_control_escapes=()
for ((_relay_code = 1; _relay_code < 32; _relay_code++)); do
    case $_relay_code in
        9 | 10 | 13) continue ;;
    esac
    printf -v _relay_hex '%02x' "$_relay_code"
    printf -v _relay_char "\\x$_relay_hex"
    _relay_control_chars+=("$_relay_char")
    _relay_control_escapes+=("\\u00$_relay_hex")
done
unset _relay_code _relay_hex _relay_char
_relay_control_pattern=$'*[\x01-\x1f]*'

_relay_usage() {
    printf 'usage: %s\n' "$1" >&2
    return 2
}

# Runs "$@" in the current shell while holding the helper's lock. A signal trap that runs
# inside a locked section of the same shell already holds the lock, so it does not wait for
# it. The timeout covers any other way of waiting on a lock that is never released.
_relay_locked() {
    if [[ ${_relay_lock_holder:-} == "$BASHPID" ]]; then
        "$@"
        return
    fi
    {
        if ! flock -w 10 9; then
            printf 'relay.sh: timed out after 10 s waiting for the lock %s; continuing without it.\n' \
                "$_relay_dir/lock" >&2
        fi
        _relay_lock_holder=$BASHPID
        "$@"
        local status=$?
        _relay_lock_holder=
        return "$status"
    } 9>>"$_relay_dir/lock"
}

# Sets _relay_id to the next event id. Call it through _relay_locked.
_relay_increment_id() {
    local last_id
    IFS= read -r last_id <"$_relay_dir/last_id"
    _relay_id=$((last_id + 1))
    printf '%s\n' "$_relay_id" >|"$_relay_dir/last_id"
}

# Records TYPE as the terminal event and returns 1 if one was already recorded. Call it
# through _relay_locked.
_relay_claim_terminal() {
    if [[ -s $_relay_dir/terminal ]]; then
        return 1
    fi
    printf '%s\n' "$1" >|"$_relay_dir/terminal"
}

# Prints the recorded terminal event type, or nothing.
_relay_terminal_type() {
    local type=
    if [[ -s $_relay_dir/terminal ]]; then
        IFS= read -r type <"$_relay_dir/terminal"
    fi
    printf '%s' "$type"
}

# Sets _relay_reply to TEXT as a JSON string literal. The C locale makes bash work on bytes,
# so UTF-8 passes through unchanged and invalid UTF-8 cannot confuse the pattern matching.
# bash's ${var//...} slows down more than linearly on long strings (900 KB took 5 s in one
# piece on bash 5.2), so the text is escaped in 32 KiB pieces.
_relay_json_escape() {
    local LC_ALL=C
    local text=$1 piece escaped= offset=0 i backslash='\'
    while ((offset < ${#text})); do
        piece=${text:offset:32768}
        offset=$((offset + 32768))
        piece=${piece//"$backslash"/"$backslash$backslash"}
        piece=${piece//'"'/'\"'}
        if [[ $piece == $_relay_control_pattern ]]; then
            piece=${piece//$'\n'/'\n'}
            piece=${piece//$'\r'/'\r'}
            piece=${piece//$'\t'/'\t'}
            if [[ $piece == $_relay_control_pattern ]]; then
                for ((i = 0; i < ${#_relay_control_chars[@]}; i++)); do
                    piece=${piece//"${_relay_control_chars[i]}"/"${_relay_control_escapes[i]}"}
                done
            fi
        fi
        escaped+=$piece
    done
    _relay_reply="\"$escaped\""
}

# Sets _relay_reply to TEXT percent-encoded for a URL query value.
_relay_url_encode() {
    local LC_ALL=C
    local text=$1 encoded= char hex i
    for ((i = 0; i < ${#text}; i++)); do
        char=${text:i:1}
        case $char in
            [A-Za-z0-9._~-]) encoded+=$char ;;
            *)
                printf -v hex '%%%02X' "'$char"
                encoded+=$hex
                ;;
        esac
    done
    _relay_reply=$encoded
}

# Prints why the relay rejected a request with HTTP status $1.
_relay_status_hint() {
    case $1 in
        400) printf 'the relay rejected the request as malformed' ;;
        401) printf 'the relay rejected RELAY_TOKEN; this job cannot report events' ;;
        413) printf 'the event is larger than the relay accepts; send the data in smaller events or chunks' ;;
        415) printf 'the relay does not accept this Content-Type' ;;
        422) printf 'the relay rejected the event as invalid; check the JSON data and the event type' ;;
        *) printf 'unexpected HTTP status' ;;
    esac
}

# POSTs the file $1 to the ingest route with Content-Type $2 and query string $3 (empty or
# starting with ?). $4 names the event in messages. $5 is "terminal" for complete and fatal.
#
# curl's own --retry covers timeouts, refused connections and HTTP 408, 429, 500, 502, 503 and
# 504 (curl 7.88 documentation of --retry). It gives up at once on a dropped connection or
# another 5xx, so this loop retries those within the same 300 s. Retrying is safe because the
# relay ignores an event id that it already accepted.
# After one POST runs out of retries, later non-terminal events get one attempt each, so that
# a relay that is gone does not stall the job's work by 300 s per event.
_relay_post() {
    local body_file=$1 content_type=$2 query=$3 label=$4 kind=${5:-}
    local url=$RELAY_URL/jobs/$RELAY_JOB_ID/events$query
    local response_file=$_relay_dir/response.$BASHPID
    local unreachable_file=$_relay_dir/unreachable
    local max_attempts=10 attempt=1 delay=1 deadline=$((SECONDS + 300))
    local status rc reason response attempts_note=
    local retry_options=(--retry 10 --retry-connrefused --retry-max-time 300)

    if [[ -e $_relay_dir/finished ]]; then
        return 0
    fi
    if [[ -e $unreachable_file && $kind != terminal ]]; then
        max_attempts=1
        retry_options=(--retry 0)
        attempts_note=' (one attempt only, because an earlier POST ran out of retries)'
    fi
    while true; do
        rc=0
        status=$(curl -sS "${retry_options[@]}" --connect-timeout 5 --max-time 30 \
            -H "@$_relay_dir/auth_header" -H "Content-Type: $content_type" -H 'Expect:' \
            --data-binary @- -o "$response_file" -w '%{http_code}' \
            "$url" <"$body_file") || rc=$?
        if ((rc == 0)); then
            case $status in
                202)
                    rm -f -- "$response_file" "$unreachable_file"
                    return 0
                    ;;
                409)
                    # The relay no longer accepts events for this job, so later ones are
                    # dropped here without a request.
                    : >|"$_relay_dir/finished"
                    rm -f -- "$response_file"
                    return 0
                    ;;
                429 | 5??) reason="HTTP $status" ;;
                *)
                    response=
                    if [[ -s $response_file ]]; then
                        IFS= read -r -n 300 response <"$response_file" || true
                    fi
                    printf 'relay.sh: POST of %s to %s failed with HTTP %s: %s. Response: %s\n' \
                        "$label" "$url" "$status" "$(_relay_status_hint "$status")" "$response" >&2
                    rm -f -- "$response_file"
                    return 1
                    ;;
            esac
        else
            case $rc in
                16 | 18 | 35 | 52 | 55 | 56 | 92) reason="curl exit status $rc" ;;
                *)
                    printf 'relay.sh: POST of %s to %s failed with curl exit status %s%s. curl printed the cause above.\n' \
                        "$label" "$url" "$rc" "$attempts_note" >&2
                    rm -f -- "$response_file"
                    : >|"$unreachable_file"
                    return 1
                    ;;
            esac
        fi
        if ((attempt >= max_attempts || SECONDS + delay > deadline)); then
            printf 'relay.sh: POST of %s to %s failed with %s after %s attempt(s)%s. The event is lost.\n' \
                "$label" "$url" "$reason" "$attempt" "$attempts_note" >&2
            rm -f -- "$response_file"
            : >|"$unreachable_file"
            return 1
        fi
        printf 'relay.sh: POST of %s to %s failed with %s; retrying in %s s (attempt %s of %s).\n' \
            "$label" "$url" "$reason" "$delay" "$((attempt + 1))" "$max_attempts" >&2
        sleep "$delay"
        delay=$((delay * 2))
        attempt=$((attempt + 1))
    done
}

# Sends one JSON event of type $1 with data $2 (JSON text). $3 is "terminal" for complete
# and fatal.
_relay_send() {
    local type=$1 data=$2 kind=${3:-} id body_file status=0
    _relay_locked _relay_increment_id
    id=$_relay_id
    _relay_json_escape "$type"
    body_file=$_relay_dir/body.$BASHPID
    printf '{"id": %s, "type": %s, "data": %s}' "$id" "$_relay_reply" "$data" >|"$body_file"
    _relay_post "$body_file" application/json "" "event $id ($type)" "$kind" || status=$?
    rm -f -- "$body_file"
    return "$status"
}

# Sends the terminal event claimed before. If the relay did not accept it, the claim is
# dropped, so that the EXIT trap can still report the end of the job.
_relay_send_terminal() {
    local status=0
    _relay_send "$1" "$2" terminal || status=$?
    if ((status != 0)); then
        _relay_locked rm -f -- "$_relay_dir/terminal"
    fi
    return "$status"
}

# Sends fatal with message $1 and exit status $2 (an integer, or null). Returns 3 without
# sending if a terminal event was already sent.
_relay_send_fatal() {
    if ! _relay_locked _relay_claim_terminal fatal; then
        return 3
    fi
    _relay_json_escape "$1"
    _relay_send_terminal fatal "{\"message\": $_relay_reply, \"exit_status\": $2}"
}

_relay_on_exit() {
    local status=$1
    # The template may have set -e or -u, which would end this trap at the first failure.
    set +eu
    if [[ $BASHPID == "$_relay_main_pid" ]]; then
        _relay_send_fatal "job script exited with status $status before sending complete" "$status"
        rm -rf -- "$_relay_dir"
    fi
}

# Handles signal $1 (a name such as TERM) with exit status $2.
_relay_on_signal() {
    local name=$1 status=$2 requested_status
    set +eu
    # Ignoring repeated signals lets the fatal POST finish. PBS still ends the job with SIGKILL
    # after its kill delay.
    trap '' TERM INT HUP
    # relay_fatal in a subshell sends SIGTERM to end the main shell with status 1.
    if [[ -s $_relay_dir/requested_exit_status ]]; then
        IFS= read -r requested_status <"$_relay_dir/requested_exit_status"
        exit "$requested_status"
    fi
    local reason=
    if [[ $name == TERM ]]; then
        reason=' (qdel or the walltime limit)'
    fi
    _relay_send_fatal "job received SIG$name$reason and stopped" "$status"
    exit "$status"
}

trap '_relay_on_exit "$?"' EXIT
trap '_relay_on_signal TERM 143' TERM
trap '_relay_on_signal INT 130' INT
trap '_relay_on_signal HUP 129' HUP

relay_json_string() {
    if (($# != 1)); then
        _relay_usage 'relay_json_string TEXT'
        return
    fi
    _relay_json_escape "$1"
    printf '%s' "$_relay_reply"
}

relay_event() {
    if (($# != 2)); then
        _relay_usage 'relay_event TYPE JSON'
        return
    fi
    case $1 in
        complete) relay_complete "$2" ;;
        fatal)
            if ! _relay_locked _relay_claim_terminal fatal; then
                printf 'relay_event: a terminal event (%s) was already sent; fatal not sent.\n' \
                    "$(_relay_terminal_type)" >&2
                return 1
            fi
            _relay_send_terminal fatal "$2"
            ;;
        *) _relay_send "$1" "$2" ;;
    esac
}

relay_log() {
    if (($# == 0)); then
        _relay_usage 'relay_log TEXT...'
        return
    fi
    local IFS=' '
    _relay_json_escape "$*"
    _relay_send log "$_relay_reply"
}

relay_token() {
    if (($# != 1)); then
        _relay_usage 'relay_token TEXT'
        return
    fi
    _relay_json_escape "$1"
    _relay_send token "$_relay_reply"
}

relay_progress() {
    if (($# < 1 || $# > 2)); then
        _relay_usage 'relay_progress PERCENT [MESSAGE]'
        return
    fi
    # Leading zeros are stripped because JSON does not allow them in numbers.
    if [[ ! $1 =~ ^0*([0-9]{1,3})(\.[0-9]+)?$ ]]; then
        printf 'relay_progress: invalid percent %q; pass a number from 0 to 100, such as 40 or 62.5.\n' \
            "$1" >&2
        return 2
    fi
    local whole=${BASH_REMATCH[1]} fraction=${BASH_REMATCH[2]}
    if ((10#$whole > 100)) || { ((10#$whole == 100)) && [[ $fraction == *[1-9]* ]]; }; then
        printf 'relay_progress: percent %q is above 100; pass a number from 0 to 100.\n' "$1" >&2
        return 2
    fi
    local data="{\"percent\": $((10#$whole))$fraction"
    if (($# == 2)); then
        _relay_json_escape "$2"
        data+=", \"message\": $_relay_reply"
    fi
    _relay_send progress "$data}"
}

relay_result() {
    if (($# != 1)); then
        _relay_usage 'relay_result JSON'
        return
    fi
    _relay_send result "$1"
}

relay_chunk() {
    if (($# < 1 || $# > 2)); then
        _relay_usage 'relay_chunk FILE [MIME]'
        return
    fi
    local file=$1 mime=${2:-application/octet-stream} id
    if [[ ! -f $file || ! -r $file ]]; then
        printf 'relay_chunk: %q is not a readable regular file.\n' "$file" >&2
        return 2
    fi
    _relay_locked _relay_increment_id
    id=$_relay_id
    _relay_url_encode "$mime"
    _relay_post "$file" application/octet-stream "?type=chunk&id=$id&mime=$_relay_reply" \
        "event $id (chunk of $file)"
}

relay_complete() {
    if (($# > 1)); then
        _relay_usage 'relay_complete [JSON]'
        return
    fi
    if ! _relay_locked _relay_claim_terminal complete; then
        printf 'relay_complete: a terminal event (%s) was already sent; complete not sent.\n' \
            "$(_relay_terminal_type)" >&2
        return 1
    fi
    _relay_send_terminal complete "${1:-null}"
}

relay_fatal() {
    if (($# == 0)); then
        _relay_usage 'relay_fatal MESSAGE...'
        return
    fi
    local IFS=' '
    local message="$*" status=0
    printf 'relay_fatal: %s\n' "$message" >&2
    _relay_send_fatal "$message" null || status=$?
    if ((status == 3)); then
        printf 'relay_fatal: a terminal event (%s) was already sent; fatal not sent.\n' \
            "$(_relay_terminal_type)" >&2
    fi
    # exit in a subshell (a pipeline, a command substitution) ends only that subshell.
    if [[ $BASHPID != "$_relay_main_pid" ]]; then
        printf '1\n' >|"$_relay_dir/requested_exit_status"
        kill -TERM "$_relay_main_pid" 2>/dev/null || true
    fi
    exit 1
}

# Decodes RELAY_ARGS. The first argument is "arg" (with NAME) or "args". Kept in Python
# because bash has neither a JSON parser nor base64url decoding.
_relay_arguments_program='
import base64
import json
import os
import sys

def fail(message):
    sys.stderr.write("relay_" + sys.argv[1] + ": " + message + "\n")
    sys.exit(2)

encoded = sys.stdin.read().strip()
try:
    padded = encoded + "=" * (-len(encoded) % 4)
    raw = base64.b64decode(padded, altchars=b"-_", validate=True) if encoded else b"{}"
    arguments = json.loads(raw.decode("utf-8"))
except ValueError as error:
    fail("RELAY_ARGS is not base64url-encoded UTF-8 JSON (%s). The relay sets it, so do not change it." % error)
if not isinstance(arguments, dict):
    fail("RELAY_ARGS contains JSON of type %s, not an object." % type(arguments).__name__)
if sys.argv[1] == "args":
    sys.stdout.buffer.write(raw)
    sys.exit(0)
name = sys.argv[2]
if name not in arguments:
    sys.exit(1)
value = arguments[name]
if not isinstance(value, str):
    value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
try:
    sys.stdout.buffer.write(value.encode("utf-8"))
except UnicodeEncodeError as error:
    fail("argument %s cannot be printed as UTF-8 (%s)." % (name, error))
'

relay_arg() {
    if (($# != 1)); then
        _relay_usage 'relay_arg NAME'
        return
    fi
    python3 -I -c "$_relay_arguments_program" arg "$1" <"$_relay_dir/args"
}

relay_args() {
    if (($# != 0)); then
        _relay_usage 'relay_args'
        return
    fi
    python3 -I -c "$_relay_arguments_program" args <"$_relay_dir/args"
}

_relay_json_escape "$HOSTNAME"
_relay_send started "{\"host\": $_relay_reply}"
