# functable.awk: folded stacks (stackcollapse.awk) on stdin, a markdown table of the functions on
# stdout: self (samples with the function innermost) and total (samples with it anywhere on the
# stack), each as a share of all samples and as microseconds of the CPU per request (cpu, in us),
# the rows by self, down to 0.5% (limit). Variables: cpu, limit (default 0.5).
{
  c = $NF
  stack = $0
  sub(/ [0-9]+$/, "", stack)
  m = split(stack, f, ";")
  all += c
  self[f[m]] += c
  delete seen
  for (i = 2; i <= m; i++) {
    if (!(f[i] in seen)) { total[f[i]] += c; seen[f[i]] = 1 }
  }
}
END {
  if (limit == "") limit = 0.5
  print "| self | self us/request | total | function |"
  print "|---:|---:|---:|---|"
  n = 0
  for (k in self) keys[++n] = k
  # insertion sort by self, descending
  for (i = 2; i <= n; i++) {
    v = keys[i]
    for (j = i - 1; j >= 1 && self[keys[j]] < self[v]; j--) keys[j + 1] = keys[j]
    keys[j + 1] = v
  }
  for (i = 1; i <= n; i++) {
    p = 100 * self[keys[i]] / all
    if (p < limit) break
    name = keys[i]
    gsub(/\|/, "\\|", name)
    printf "| %.1f%% | %.2f | %.1f%% | %s |\n", p, p * cpu / 100, 100 * total[keys[i]] / all, name
  }
}
