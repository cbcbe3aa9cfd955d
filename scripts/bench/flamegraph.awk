# flamegraph.awk: folded stacks ("a;b;c COUNT", sorted) on stdin, an SVG flame graph on stdout:
# one box per frame, its width the share of samples that passed through it, callers below
# callees; hover a box for its name, samples and share. The project's own (FlameGraph is not
# packaged in Debian). Variable: title.
function esc(s) {
  gsub(/&/, "\\&amp;", s)
  gsub(/</, "\\&lt;", s)
  gsub(/>/, "\\&gt;", s)
  gsub(/"/, "\\&quot;", s)
  return s
}
function emit(d, name, from, to) {
  nb++
  bd[nb] = d
  bn[nb] = name
  bf[nb] = from
  bt[nb] = to
  if (d > maxd) maxd = d
}
{
  c = $NF
  stack = $0
  sub(/ [0-9]+$/, "", stack)
  m = split(stack, f, ";")
  for (i = 1; i <= pn && i <= m && pf[i] == f[i]; i++);
  common = i - 1
  for (d = pn; d > common; d--) emit(d, pf[d], st[d], x)
  for (d = common + 1; d <= m; d++) st[d] = x
  x += c
  for (i = 1; i <= m; i++) pf[i] = f[i]
  pn = m
}
END {
  for (d = pn; d >= 1; d--) emit(d, pf[d], st[d], x)
  emit(0, "all", 0, x)
  W = 1200; H = 16; top = 40
  height = top + (maxd + 1) * H + 10
  printf "<?xml version=\"1.0\" standalone=\"no\"?>\n"
  printf "<svg version=\"1.1\" width=\"%d\" height=\"%d\" xmlns=\"http://www.w3.org/2000/svg\">\n", W, height
  printf "<style>text { font-family: monospace; font-size: 11px; } rect { stroke: white; stroke-width: 0.5; }</style>\n"
  printf "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#f8f8f0\"/>\n", W, height
  printf "<text x=\"10\" y=\"20\" style=\"font-size: 14px\">%s (%d samples)</text>\n", esc(title), x
  if (x == 0) { print "</svg>"; exit }
  for (b = 1; b <= nb; b++) {
    w = (bt[b] - bf[b]) * (W - 20) / x
    if (w < 0.3) continue
    bx = 10 + bf[b] * (W - 20) / x
    by = height - 10 - (bd[b] + 1) * H
    # a warm colour from the name, so a function keeps its colour across graphs
    hsh = 0
    for (k = 1; k <= length(bn[b]) && k <= 12; k++) hsh = (hsh * 31 + index("abcdefghijklmnopqrstuvwxyz_0123456789", tolower(substr(bn[b], k, 1)))) % 997
    r = 205 + hsh % 50; g = 80 + (hsh * 7) % 150; bl = 40 + (hsh * 13) % 50
    printf "<g><title>%s (%d samples, %.2f%%)</title>", esc(bn[b]), bt[b] - bf[b], 100 * (bt[b] - bf[b]) / x
    printf "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"rgb(%d,%d,%d)\"/>", bx, by, w, H - 1, r, g, bl
    chars = int(w / 7)
    if (chars >= 3) {
      label = bn[b]
      if (length(label) > chars) label = substr(label, 1, chars - 2) ".."
      printf "<text x=\"%.1f\" y=\"%d\">%s</text>", bx + 3, by + 11, esc(label)
    }
    printf "</g>\n"
  }
  print "</svg>"
}
