# bench/summary.awk — turns bench/run.sh's CSV into the markdown report (POSIX awk).
#
# A round is kept only if every measurement in it is valid: every response had the
# expected status, no socket errors, and the load generator was not saturated (the
# `direct` row is exempt from the saturation rule: it is a reference, in no ratio).
# Numbers are medians over the kept rounds with (min–max); ratios are computed within
# each round first, then summarised the same way.

function sortnum(a, n,    i, j, t) {
  for (i = 2; i <= n; i++) {
    t = a[i]
    for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
    a[j + 1] = t
  }
}
function stat(list, what,    a, n, i) {
  n = split(list, a, " ")
  if (n == 0) return ""
  for (i = 1; i <= n; i++) a[i] += 0
  sortnum(a, n)
  if (what == "min") return a[1]
  if (what == "max") return a[n]
  if (n % 2) return a[(n + 1) / 2]
  return (a[n / 2] + a[n / 2 + 1]) / 2
}
function cell(list, dec,    m, lo, hi, f) {
  if (list == "") return "–"
  f = "%." dec "f"
  m = sprintf(f, stat(list, "med"))
  lo = sprintf(f, stat(list, "min"))
  hi = sprintf(f, stat(list, "max"))
  if (lo == hi) return m
  return m " (" lo "–" hi ")"
}
function add(key, v) {
  if (v == "") return
  L[key] = (key in L) ? L[key] " " v : v
}
function verdict(v, goal, le) {
  if (v == "") return "n/a"
  if (le) return (v + 0 <= goal) ? "**met**" : "not met"
  return (v + 0 >= goal) ? "**met**" : "not met"
}

NR == 1 { next }
{
  r = $1; sc = $2
  if (sc ~ /^mem-/) { MEM[sc] = $19; MEMV[sc] = $18; next }
  if (sc ~ /rps$/) {
    FR[sc, r, "p50"] = $7; FR[sc, r, "p99"] = $9; FR[sc, r, "rps"] = $6
    if ($18 != 1) { FRBAD[r] = 1; FRWHY = FRWHY "round " r " " sc ": " $19 "; " }
    FRSEEN[r] = 1
    next
  }
  SEEN[r] = 1; PRESENT[sc] = 1
  RPS[sc, r] = $6; P50[sc, r] = $7; P99[sc, r] = $9; PC[sc, r] = $12; UC[sc, r] = $13
  if ($18 != 1) { BAD[r] = 1; WHY[r] = WHY[r] sc ": " $19 "; " }
  if (sc == "direct" && $19 ~ /saturated/) DSAT++
}

END {
  nk = 0
  for (r = 1; r <= rounds; r++) if ((r in SEEN) && !(r in BAD)) KEEP[++nk] = r
  allbad = 0
  if (nk == 0) {
    allbad = 1
    for (r = 1; r <= rounds; r++) if (r in SEEN) KEEP[++nk] = r
  }
  nseen = 0
  for (r = 1; r <= rounds; r++) if (r in SEEN) nseen++

  print ""
  print "## portcullis benchmark" (smoke == 1 ? " (SMOKE: numbers are meaningless)" : "")
  print ""
  printf "`bench/run.sh`: %d round(s) x %d s per measurement, interleaved; %d connections; ", rounds, dur, conns
  print "wrk -t1 on the load-generator CPU, upstream + proxy on the server CPU (" nproc " CPUs online)."
  print "Load average (1/5/15 min) before: " load_before "; after: " load_after "."
  printf "Rounds kept: %d of %d", (allbad ? 0 : nk), nseen
  if (allbad) printf " — **no round was clean; the numbers below use every round and are not trustworthy**"
  print "."
  for (r = 1; r <= rounds; r++) if (r in BAD) print "- round " r " discarded: " WHY[r]
  print ""

  split("direct nginx hyper passthrough enforcing enforcing-nosignals enforcing-loginfo mcp-call deny park-redis park-embedded", ORDER, " ")
  print "| scenario | conns | req/s | p50 µs | p99 µs | proxy CPU µs/req | upstream CPU µs/req | notes |"
  print "|---|---|---|---|---|---|---|---|"
  for (o = 1; o <= 11; o++) {
    sc = ORDER[o]
    if (!(sc in PRESENT)) continue
    split("", L)
    for (k = 1; k <= nk; k++) {
      r = KEEP[k]
      add("rps", RPS[sc, r]); add("p50", P50[sc, r]); add("p99", P99[sc, r])
      add("pc", PC[sc, r]); add("uc", UC[sc, r])
    }
    note = ""
    if (sc == "direct") note = "reference; load generator saturated in " (DSAT + 0) " round(s)"
    if (sc == "hyper") note = "bare hyper forwarder: the floor under any hyper-based proxy"
    if (sc == "deny") note = "403, audit record fsynced before the answer"
    if (sc == "mcp-call") note = "the enforcing request as an MCP tools/call (2026-07-28)"
    if (sc == "enforcing-nosignals") note = "enforcing with signals: { enabled: false }"
    if (sc == "enforcing-loginfo") note = "enforcing at the default log level (info: a line per request)"
    if (sc ~ /^park/) note = "202 parks/s, fresh store per round"
    printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", sc, conns, cell(L["rps"], 0), cell(L["p50"], 0),
      cell(L["p99"], 0), (sc == "direct" ? "–" : cell(L["pc"], 1)), cell(L["uc"], 1), note
  }
  print ""

  print "| at 1 connection | p50 µs | p99 µs | added p50 µs over direct | added p99 µs over direct |"
  print "|---|---|---|---|---|"
  split("direct-c1 nginx-c1 hyper-c1 passthrough-c1 enforcing-c1", C1, " ")
  for (o = 1; o <= 5; o++) {
    sc = C1[o]
    if (!(sc in PRESENT)) continue
    split("", L)
    for (k = 1; k <= nk; k++) {
      r = KEEP[k]
      add("p50", P50[sc, r]); add("p99", P99[sc, r])
      if (sc != "direct-c1" && ("direct-c1", r) in P50) {
        add("a50", P50[sc, r] - P50["direct-c1", r]); add("a99", P99[sc, r] - P99["direct-c1", r])
      }
    }
    if (sc == "enforcing-c1") { A50 = L["a50"]; A99 = L["a99"] }
    printf "| %s | %s | %s | %s | %s |\n", sc, cell(L["p50"], 0), cell(L["p99"], 0),
      (sc == "direct-c1" ? "–" : cell(L["a50"], 0)), (sc == "direct-c1" ? "–" : cell(L["a99"], 0))
  }
  print ""

  # Fixed-rate latency (oha), if it ran: each row against direct in the same round.
  fd = "direct-" rate "rps"
  nfr = split("nginx hyper passthrough enforcing", FRROWS, " ")
  split("", L)
  for (r = 1; r <= rounds; r++) {
    if (!((fd, r, "p50") in FR) || (r in FRBAD)) continue
    add("d50", FR[fd, r, "p50"]); add("d99", FR[fd, r, "p99"])
    for (i = 1; i <= nfr; i++) {
      fe = FRROWS[i] "-" rate "rps"
      if (!((fe, r, "p50") in FR)) continue
      add(FRROWS[i] "50", FR[fe, r, "p50"]); add(FRROWS[i] "99", FR[fe, r, "p99"])
      add(FRROWS[i] "a50", FR[fe, r, "p50"] - FR[fd, r, "p50"])
      add(FRROWS[i] "a99", FR[fe, r, "p99"] - FR[fd, r, "p99"])
    }
  }
  if (L["d50"] != "") {
    print "| at " rate " req/s (oha, latency-corrected) | p50 µs | p99 µs | added p50 µs | added p99 µs |"
    print "|---|---|---|---|---|"
    printf "| direct | %s | %s | – | – |\n", cell(L["d50"], 0), cell(L["d99"], 0)
    for (i = 1; i <= nfr; i++) {
      k = FRROWS[i]
      if (L[k "50"] == "") continue
      printf "| %s | %s | %s | %s | %s |\n", k, cell(L[k "50"], 0), cell(L[k "99"], 0), cell(L[k "a50"], 0), cell(L[k "a99"], 0)
    }
    print ""
  }
  if (FRWHY != "") {
    print "Fixed-rate rounds left out: " FRWHY
    print ""
  }

  # Ratios within each round, then the targets (issue 6).
  split("", L)
  for (k = 1; k <= nk; k++) {
    r = KEEP[k]
    if (RPS["nginx", r] > 0 && ("enforcing", r) in RPS) add("en_ng", RPS["enforcing", r] / RPS["nginx", r])
    if (RPS["passthrough", r] > 0 && ("enforcing", r) in RPS) add("en_pt", RPS["enforcing", r] / RPS["passthrough", r])
    if (RPS["nginx", r] > 0 && ("passthrough", r) in RPS) add("pt_ng", RPS["passthrough", r] / RPS["nginx", r])
    if (PC["nginx", r] > 0 && PC["enforcing", r] != "") add("cpu", PC["enforcing", r] / PC["nginx", r])
    if (RPS["nginx", r] > 0 && ("hyper", r) in RPS) add("hy_ng", RPS["hyper", r] / RPS["nginx", r])
    if (RPS["hyper", r] > 0 && ("enforcing", r) in RPS) add("en_hy", RPS["enforcing", r] / RPS["hyper", r])
    if (PC["hyper", r] > 0 && PC["enforcing", r] != "") add("cpu_hy", PC["enforcing", r] - PC["hyper", r])
    if (PC["mcp-call", r] != "" && PC["enforcing", r] != "") add("mcp_en", PC["mcp-call", r] - PC["enforcing", r])
    if (RPS["enforcing", r] > 0 && ("enforcing-loginfo", r) in RPS) add("logi", RPS["enforcing-loginfo", r] / RPS["enforcing", r])
    if (RPS["enforcing-nosignals", r] > 0 && ("enforcing", r) in RPS) add("sig", RPS["enforcing", r] / RPS["enforcing-nosignals", r])
    add("pr", RPS["park-redis", r]); add("pr99", P99["park-redis", r]); add("pe", RPS["park-embedded", r])
  }
  print "| target (issue 6) | measured: median (min–max) | goal | verdict |"
  print "|---|---|---|---|"
  printf "| enforcing / nginx throughput, same round | %s | ≥ 1.00 | %s |\n", cell(L["en_ng"], 2), verdict(stat(L["en_ng"], "med"), 1.0, 0)
  printf "| enforcing / passthrough throughput | %s | ≥ 0.95 | %s |\n", cell(L["en_pt"], 2), verdict(stat(L["en_pt"], "med"), 0.95, 0)
  if ("logi" in L) printf "| enforcing, default log level (info) / warn throughput | %s | ≥ 0.95 | %s |\n", cell(L["logi"], 3), verdict(stat(L["logi"], "med"), 0.95, 0)
  if ("sig" in L) printf "| enforcing, signals on / off throughput | %s | ≥ 0.97 | %s |\n", cell(L["sig"], 3), verdict(stat(L["sig"], "med"), 0.97, 0)
  printf "| (passthrough / nginx throughput) | %s | – | – |\n", cell(L["pt_ng"], 2)
  printf "| enforcing CPU / nginx CPU per request | %s | ≤ 1.00 | %s |\n", cell(L["cpu"], 2), verdict(stat(L["cpu"], "med"), 1.0, 1)
  if (L["hy_ng"] != "") {
    printf "| (bare hyper forwarder / nginx throughput) | %s | – | – |\n", cell(L["hy_ng"], 2)
    printf "| (enforcing / bare hyper forwarder throughput) | %s | – | – |\n", cell(L["en_hy"], 2)
    printf "| (enforcing − bare hyper forwarder, CPU µs per request) | %s | – | – |\n", cell(L["cpu_hy"], 1)
  }
  if (L["mcp_en"] != "")
    printf "| MCP tools/call − HTTP, proxy CPU µs per allowed request (issue 16) | %s | ≤ 20 | %s |\n", cell(L["mcp_en"], 1), verdict(stat(L["mcp_en"], "med"), 20, 1)
  printf "| added p50 at 1 connection (enforcing − direct), µs | %s | ≤ 30 | %s |\n", cell(A50, 0), verdict(stat(A50, "med"), 30, 1)
  printf "| added p99 at 1 connection (enforcing − direct), µs | %s | ≤ 60 | %s |\n", cell(A99, 0), verdict(stat(A99, "med"), 60, 1)
  if (L["pr"] != "") {
    printf "| parks/s, redis store (AOF everysec) | %s | ≥ 10000 | %s |\n", cell(L["pr"], 0), verdict(stat(L["pr"], "med"), 10000, 0)
    printf "| park p99 at %d connections, redis store, µs | %s | ≤ 10000 | %s |\n", conns, cell(L["pr99"], 0), verdict(stat(L["pr99"], "med"), 10000, 1)
  }
  if (L["pe"] != "")
    printf "| parks/s, embedded store (durable) | %s | ≥ 2000 | %s |\n", cell(L["pe"], 0), verdict(stat(L["pe"], "med"), 2000, 0)
  m = MEM["mem-1000-idle-conns"]
  if (m != "") {
    rss = m; sub(/^rss_kib=/, "", rss); sub(/ .*/, "", rss)
    idle = m; sub(/.*idle_rss_kib=/, "", idle)
    printf "| RSS with 1000 idle keep-alive agent connections, MiB | %.1f (idle before: %.1f) | ≤ 64 | %s |\n", rss / 1024, idle / 1024, verdict(rss / 1024, 64, 1)
  }
  m = MEM["mem-50mib-body"]
  if (m != "") {
    b = m; sub(/.*rss_before_kib=/, "", b); sub(/ .*/, "", b)
    p = m; sub(/.*peak_kib=/, "", p)
    st = m; sub(/^status=/, "", st); sub(/ .*/, "", st)
    printf "| peak RSS growth streaming a 50 MiB body, MiB | %.1f (status %s) | flat (≤ 8) | %s |\n", (p - b) / 1024, st, (MEMV["mem-50mib-body"] == 1 ? verdict((p - b) / 1024, 8, 1) : "not met")
  }
  print ""
  print "CSV: " csv
}
