# bench/callgrind.awk — folds `callgrind_annotate --auto=no` output by function.
#
# callgrind_annotate prints one line per file:function pair, so one Rust function with
# inlined code shows up once per source file. Self (exclusive) costs of those lines
# add up; inclusive costs overlap, so for them the largest line is kept (a lower bound).
#   awk -v mode=self|incl [-v filter=REGEX] -f bench/callgrind.awk annotate.txt | sort -rn
/^ *[0-9,]+ \([ 0-9.]+%\)  / {
  n = $1
  gsub(/,/, "", n)
  line = $0
  sub(/^ *[0-9,]+ \([ 0-9.]+%\)  /, "", line)
  sub(/ \[[^]]*\]$/, "", line)
  if (line == "PROGRAM TOTALS") { total = n; next }
  fn = substr(line, index(line, ":") + 1)
  if (filter != "" && fn !~ filter) next
  if (mode == "incl") { if (n > c[fn]) c[fn] = n } else c[fn] += n
}
END {
  if (total == 0) exit 1
  for (f in c) printf "%d\t%6.2f%%  %s\n", c[f], 100 * c[f] / total, f
}
