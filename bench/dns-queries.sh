# Sourced by bench/dns-qps.sh and bench/hardening-qps.sh: the query mix both measure, from the
# zone itself: 80% referrals (`<tld>. NS` and `www.<tld>. A` for every delegated TLD), 20%
# NXDOMAIN (`<random>. A`), in a fixed shuffled order.
dns_queries() { # zone out-file
  local tlds
  tlds="$(mktemp)"
  awk '$4 == "NS" && $1 != "." { print $1 }' "$1" | sort -u > "$tlds"
  {
    while read -r t; do echo "$t NS"; echo "www.$t A"; done < "$tlds"
    n=$(( $(wc -l < "$tlds") / 2 ))
    for i in $(seq 1 "$n"); do echo "nx$RANDOM$i. A"; done
  } | shuf --random-source=<(yes) > "$2"
  rm -f "$tlds"
}
