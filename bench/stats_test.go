package bench

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
)

// samples is one figure measured several times.
type samples []float64

func (s samples) sorted() []float64 { c := slices.Clone([]float64(s)); slices.Sort(c); return c }

func (s samples) median() float64 { return s.quantile(0.5) }

// quantile is the q-quantile by linear interpolation between the closest ranks.
func (s samples) quantile(q float64) float64 {
	c := s.sorted()
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

func (s samples) min() float64 { return slices.Min(s) }
func (s samples) max() float64 { return slices.Max(s) }

// String renders "412 (380–450, n=5)": the median, the spread and the count.
func (s samples) String() string {
	if len(s) == 0 {
		return "no samples"
	}
	if len(s) == 1 {
		return num(s[0])
	}
	return fmt.Sprintf("%s (%s–%s, n=%d)", num(s.median()), num(s.min()), num(s.max()), len(s))
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// figure prints one line of results, prefixed so bench/run.sh can gather them into its
// summary, with the machine's load average at the time: the machine is shared and the
// figures are only comparable with the load they were measured under.
func figure(tb testing.TB, name, format string, args ...any) {
	tb.Helper()
	line := fmt.Sprintf("FIGURE %-14s %s [load %s]", name, fmt.Sprintf(format, args...), loadAverage())
	fmt.Println(line)
}

// verdict says whether a goal was met, for the printed line.
func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT MET"
}

// reportMedian reports a series' median to the benchmark framework under unit, so that
// the standard output line carries it too.
func reportMedian(b *testing.B, s samples, unit string) {
	if len(s) > 0 {
		b.ReportMetric(s.median(), unit)
	}
}
