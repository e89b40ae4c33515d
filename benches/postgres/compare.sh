#!/usr/bin/env bash
# The two questions of the reads_e2e benchmark, asked of a normalized
# PostgreSQL schema (orders, line items) holding data of the same shape:
# 20 stores of 50,000 customers, 3 orders each over a year (3M orders,
# 6M line items). Prints, for a point read (one customer's lifetime value)
# and a range read (30 days of one store's daily summary), the
# transactions/s with 32 clients in flight, then the latency p50/p99 at a
# steady half of that rate: the figures to set beside reads_e2e's.
#
# Run: benches/postgres/compare.sh   (needs Debian's postgresql 15 and
# pgbench; runs the server as user postgres on a socket in a temporary
# folder, port 15432; about 3 minutes on 2 cores). SECONDS_PER_RUN=10.
set -euo pipefail

run_seconds=${SECONDS_PER_RUN:-10}
dir=$(mktemp -d /tmp/projector-pg.XXXXXX)
chmod 755 "$dir"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() {
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}
stop() { as_postgres "$bin/pg_ctl -D $dir/data stop -m fast" > /dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT

as_postgres "$bin/initdb -D $dir/data -A trust -U postgres" > /dev/null
as_postgres "$bin/pg_ctl -D $dir/data -l $dir/log -w -o '-p 15432 -k $dir -c shared_buffers=1GB -c max_connections=100' start" > /dev/null
sql() { psql -X -q -h "$dir" -p 15432 -U postgres -v ON_ERROR_STOP=1 "$@" postgres; }

echo "postgres: loading 3M orders and 6M line items"
started=$(date +%s)
sql <<'SQL'
CREATE TABLE orders (
    order_id bigint PRIMARY KEY, store_id int NOT NULL, customer_id bigint NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL, total_cents bigint NOT NULL);
CREATE TABLE line_items (
    order_id bigint NOT NULL, line int NOT NULL, product_id bigint NOT NULL,
    quantity int NOT NULL, unit_price_cents bigint NOT NULL, PRIMARY KEY (order_id, line));
-- Line k of order o: product 9000 + (7o + 13k) % 500, quantity 1 + (o + k) % 3,
-- price 100 + (31o + 17k) % 5000; the order's total is the sum of its lines.
INSERT INTO orders
SELECT o, s, c, CASE WHEN o % 20 = 0 THEN 'cancelled' ELSE 'placed' END,
       timestamptz '2023-04-01 00:00:00+00' + ((o * 7919) % 31536000) * interval '1 second',
       (1 + (o + 1) % 3) * (100 + (31 * o + 17) % 5000) + (1 + (o + 2) % 3) * (100 + (31 * o + 34) % 5000)
FROM (SELECT row_number() OVER () AS o, s, c
      FROM generate_series(0, 19) s, generate_series(0, 49999) c, generate_series(1, 3) n) g;
INSERT INTO line_items
SELECT o.order_id, k, 9000 + (7 * o.order_id + 13 * k) % 500, 1 + (o.order_id + k) % 3, 100 + (31 * o.order_id + 17 * k) % 5000
FROM orders o, generate_series(1, 2) k;
CREATE INDEX orders_by_customer ON orders (store_id, customer_id);
CREATE INDEX orders_by_day ON orders (store_id, created_at);
VACUUM ANALYZE;
SQL
echo "postgres: loaded in $(( $(date +%s) - started )) s"

cat > "$dir/point.sql" <<'SQL'
\set s random(0, 19)
\set c random(0, 49999)
SELECT count(*), sum(total_cents), sum(total_cents) / nullif(count(*), 0), min(created_at), max(created_at)
FROM orders WHERE store_id = :s AND customer_id = :c AND status = 'placed';
SQL
cat > "$dir/range.sql" <<'SQL'
\set s random(0, 19)
\set d random(0, 330)
SELECT date(created_at AT TIME ZONE 'UTC') AS day,
       count(*) FILTER (WHERE status = 'placed'),
       sum(total_cents) FILTER (WHERE status = 'placed'),
       count(*) FILTER (WHERE status = 'cancelled')
FROM orders
WHERE store_id = :s
  AND created_at >= timestamptz '2023-04-01 00:00:00+00' + :d * interval '1 day'
  AND created_at < timestamptz '2023-04-01 00:00:00+00' + (:d + 30) * interval '1 day'
GROUP BY 1 ORDER BY 1;
SQL

bench() {
    local name=$1 script=$2
    local tps
    tps=$(pgbench -n -M prepared -h "$dir" -p 15432 -U postgres -c 32 -j 2 -T "$run_seconds" -f "$script" postgres 2>/dev/null \
        | awk '/^tps/ {print int($3)}')
    local rate=$(( tps / 2 ))
    (cd "$dir" && rm -f pgbench_log.* && pgbench -n -M prepared -h "$dir" -p 15432 -U postgres -c 32 -j 2 -T "$run_seconds" \
        -R "$rate" -l -f "$script" postgres > /dev/null 2>&1)
    # Per-transaction logs: the third column is the latency in µs (from
    # the scheduled start under -R, so waiting counts).
    cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n > "$dir/latencies"
    local count p50 p99
    count=$(wc -l < "$dir/latencies")
    p50=$(awk -v n="$count" 'NR == int(n * 0.50) + 1 {printf "%.2f", $1 / 1000}' "$dir/latencies")
    p99=$(awk -v n="$count" 'NR == int(n * 0.99) + 1 {printf "%.2f", $1 / 1000}' "$dir/latencies")
    echo "postgres: $name: $tps transactions/s with 32 in flight; at $rate/s: p50 $p50 ms, p99 $p99 ms"
}
bench "point read (customer LTV from orders)" "$dir/point.sql"
bench "range read (30 days of summary from orders)" "$dir/range.sql"
