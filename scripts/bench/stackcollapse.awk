# stackcollapse.awk: `perf script -F comm,tid,ip,sym,dso` on stdin, folded stacks on stdout:
# "comm;outermost;...;innermost COUNT" per distinct stack, the input of flamegraph.awk. The
# project's own (FlameGraph is not packaged in Debian). Offsets are dropped from the symbols; an
# unresolved frame is named by its object ("[libcrypto.so.3]").
function flush(   s, k) {
  if (n) {
    s = comm
    for (k = n; k >= 1; k--) s = s ";" st[k]
    count[s]++
  }
  n = 0
}
/^\t/ {
  sym = $2
  for (k = 3; k < NF; k++) sym = sym " " $k
  sub(/\+0x[0-9a-f]+$/, "", sym)
  if (sym == "[unknown]" || sym == "") {
    obj = $NF
    gsub(/[()]/, "", obj)
    sub(/.*\//, "", obj)
    sym = "[" obj "]"
  }
  gsub(/;/, ":", sym)
  st[++n] = sym
  next
}
/^$/ { flush(); next }
{
  flush()
  comm = $1
}
END {
  flush()
  for (s in count) print s, count[s]
}
