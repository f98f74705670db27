#!/busybox sh
# Container tests of demo-app, run by busybox sh inside the image built from
# Dockerfile.test (FROM scratch: every tool is `$BB <applet>`).
#
# Starts /demo-app on $TEST_PORT (default 18081), waits for it (bounded),
# runs the checks and writes a JUnit report to
# /workspace/${REPORT_DIR:-reports}/demo-app-junit.xml (one testcase per
# check). Exits 1 if any check failed, 2 if the app never came up.
#
# FAIL_TEST=<check name> makes that check fail on purpose (to test how the
# pipeline reports failing tests). Checks: health, health-version, root,
# not-found, slow.
BB=/busybox
PORT_UNDER_TEST="${TEST_PORT:-18081}"
BASE="http://127.0.0.1:$PORT_UNDER_TEST"
REPORT_DIR="/workspace/${REPORT_DIR:-reports}"
REPORT="$REPORT_DIR/demo-app-junit.xml"
CASES=""
TESTS=0
FAILURES=0

xml_escape() {
  printf '%s' "$1" | $BB sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' \
    -e 's/"/\&quot;/g' | $BB tr '\n\r\t' '   '
}

# record NAME [FAILURE-MESSAGE]
record() {
  TESTS=$((TESTS + 1))
  name="$1"
  msg="$2"
  if [ -z "$msg" ] && [ "${FAIL_TEST:-}" = "$name" ]; then
    msg="deliberate failure (FAIL_TEST=$name)"
  fi
  if [ -n "$msg" ]; then
    FAILURES=$((FAILURES + 1))
    echo "FAIL $name: $msg"
    CASES="$CASES    <testcase classname=\"demo-app.container\" name=\"$name\"><failure message=\"$(xml_escape "$msg")\" type=\"AssertionError\"/></testcase>
"
  else
    echo "ok   $name"
    CASES="$CASES    <testcase classname=\"demo-app.container\" name=\"$name\"/>
"
  fi
}

write_report() {
  $BB mkdir -p "$REPORT_DIR" || { echo "cannot create $REPORT_DIR" >&2; return 1; }
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuites tests=\"$TESTS\" failures=\"$FAILURES\">"
    echo "  <testsuite name=\"demo-app container tests\" tests=\"$TESTS\" failures=\"$FAILURES\" errors=\"0\" skipped=\"0\">"
    printf '%s' "$CASES"
    echo '  </testsuite>'
    echo '</testsuites>'
  } > "$REPORT"
  echo "wrote $REPORT ($TESTS tests, $FAILURES failures)"
}

# fetch PATH: body on stdout; wget's exit status (non-zero on HTTP >= 400).
# (Debian's static busybox wget segfaults with -T, hence `timeout`.)
fetch() {
  $BB timeout 5 $BB wget -q -O - "$BASE$1" 2>/dev/null
}

PORT="$PORT_UNDER_TEST" /demo-app &
APP=$!

up=""
i=0
while [ $i -lt 100 ]; do            # at most ~10 s
  if fetch /health >/dev/null; then up=1; break; fi
  if ! $BB kill -0 "$APP" 2>/dev/null; then break; fi
  $BB usleep 100000
  i=$((i + 1))
done

if [ -z "$up" ]; then
  record startup "demo-app did not answer $BASE/health within 10 s"
  write_report
  $BB kill "$APP" 2>/dev/null
  exit 2
fi
record startup

body="$(fetch /health)"
case "$body" in
  *'"status":"ok"'*) record health ;;
  *) record health "GET /health: expected \"status\":\"ok\", got: $body" ;;
esac

case "$body" in
  *'"version":"'?*'"'*) record health-version ;;
  *) record health-version "GET /health: no version in: $body" ;;
esac

body="$(fetch /)"
case "$body" in
  *demo-app*) record root ;;
  *) record root "GET /: expected a greeting naming demo-app, got: $body" ;;
esac

if fetch /no-such-page >/dev/null; then
  record not-found "GET /no-such-page: expected 404, got a success"
else
  record not-found
fi

body="$(fetch '/slow?ms=50')"
case "$body" in
  "slept 50 ms") record slow ;;
  *) record slow "GET /slow?ms=50: expected \"slept 50 ms\", got: $body" ;;
esac

$BB kill "$APP" 2>/dev/null
write_report || exit 1
[ "$FAILURES" -eq 0 ]
