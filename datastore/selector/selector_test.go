package selector

import (
	"errors"
	"strings"
	"testing"
)

func TestMatches(t *testing.T) {
	worker := map[string]string{"role": "worker", "zone": "a", "rack": "r1"}
	master := map[string]string{"role": "master", "zone": "b"}
	none := map[string]string(nil)

	tests := []struct {
		sel                    string
		worker, master, noLabs bool
	}{
		{"", true, true, true},
		{"   ", true, true, true},
		{"all()", true, true, true},
		{"all ( )", true, true, true},
		{"role == 'worker'", true, false, false},
		{`role == "worker"`, true, false, false},
		{"role != 'worker'", false, true, true},
		{"has(rack)", true, false, false},
		{"!has(rack)", false, true, true},
		{"! has( rack )", false, true, true},
		{"zone in {'a', 'c'}", true, false, false},
		{"zone in {}", false, false, false},
		{"zone not in {'a'}", false, true, true},
		{"zone not in {}", true, true, true},
		{"role == 'worker' && zone == 'a'", true, false, false},
		{"role == 'worker' && zone == 'b'", false, false, false},
		{"role == 'master' || zone == 'a'", true, true, false},
		{"!(role == 'master' || zone == 'a')", false, false, true},
		{"has(role) && !(zone in {'b'})", true, false, false},
		{"all() && has(zone)", true, true, false},
		// && binds tighter than ||.
		{"role == 'master' || role == 'worker' && zone == 'x'", false, true, false},
		{"(role == 'master' || role == 'worker') && zone == 'a'", true, false, false},
		{"!!has(rack)", true, false, false},
		// Label keys with the characters Kubernetes allows, and keys named like functions.
		{"has(kubernetes.io/hostname)", false, false, false},
		{"has == 'x'", false, false, false},
		{"all != 'x'", true, true, true},
		// A value may contain the other kind of quote.
		{`role == 'wor"ker'`, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			s, err := Parse(tt.sel)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.sel, err)
			}
			for _, c := range []struct {
				name   string
				labels map[string]string
				want   bool
			}{{"worker", worker, tt.worker}, {"master", master, tt.master}, {"no labels", none, tt.noLabs}} {
				if got := s.Matches(c.labels); got != c.want {
					t.Errorf("%q.Matches(%s) = %v, want %v", tt.sel, c.name, got, c.want)
				}
			}
		})
	}
}

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "all()"},
		{"all()", "all()"},
		{"role=='w'", `role == "w"`},
		{"role!='w'", `role != "w"`},
		{`r == 'a"b'`, `r == 'a"b'`},
		{"has( a )", "has(a)"},
		{"!has(a)", "!has(a)"},
		{"!(a == 'x')", `!(a == "x")`},
		{"z in {'b','a','b'}", `z in {"a", "b"}`},
		{"z not in {}", "z not in {}"},
		{"(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"},
		{"has(a) || (has(b) || has(c))", "has(a) || has(b) || has(c)"},
		{"(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"},
		{"has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"},
		{"!(has(a) && has(b))", "!(has(a) && has(b))"},
		{"((has(a)))", "has(a)"},
	}
	for _, tt := range tests {
		s, err := Parse(tt.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.in, err)
		}
		if got := s.String(); got != tt.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
		again, err := Parse(s.String())
		if err != nil || again.String() != s.String() {
			t.Errorf("String %q does not parse back to itself: %v, %q", s.String(), err, again.String())
		}
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		sel     string
		pos     int
		message string
	}{
		{"role", 5, `label key "role" at position 1 has no operator`},
		{"role = 'x'", 6, `unexpected "=" after label key "role"`},
		{"role == x", 9, "expected a quoted string"},
		{"role == 'x", 9, "unterminated string"},
		{"has(a", 6, `expected ")"`},
		{"has()", 5, "expected a label key inside has()"},
		{"all(", 5, `expected ")" after all(`},
		{"has(a) has(b)", 8, "after a complete expression"},
		{"has(a) &&", 10, "unexpected end of selector"},
		{"(has(a)", 8, `expected ")" to close the parenthesis`},
		{"z in {'a' 'b'}", 11, `expected "," or }`},
		{"z in 'a'", 6, `expected "{"`},
		{"z not {'a'}", 7, `expected "in" after "not"`},
		{"&& has(a)", 1, "expected a label key"},
		{"has(a) & has(b)", 8, "after a complete expression"},
		{strings.Repeat("(", 200) + "has(a)" + strings.Repeat(")", 200), 101, "nesting deeper than 100"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.sel)
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("Parse(%q) = %v, want a *SyntaxError", tt.sel, err)
			continue
		}
		if se.Pos != tt.pos || !strings.Contains(err.Error(), tt.message) {
			t.Errorf("Parse(%q) = %v (position %d), want position %d and %q", tt.sel, err, se.Pos, tt.pos, tt.message)
		}
		if !strings.Contains(err.Error(), tt.sel) {
			t.Errorf("error %q does not quote the selector", err)
		}
	}
}

func TestZeroValueMatchesEverything(t *testing.T) {
	var s Selector
	if !s.Matches(nil) || s.String() != "all()" || !All().Matches(map[string]string{"a": "b"}) {
		t.Fatal("the zero Selector must be all()")
	}
}

// FuzzParse checks that no input panics, that every selector that parses renders to a
// String that parses back to itself, and that the rendering selects the same label sets.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "all()", "role == 'worker'", `a != "b"`, "has(a) && !has(b)", "z in {'a','b'}",
		"z not in {}", "(a == 'x' || b == 'y') && !(c in {'1'})", "!!has(x)", "has(", "'",
		"a == 'x\"y'", "((((has(a)))))",
	} {
		f.Add(s)
	}
	labelSets := []map[string]string{
		nil,
		{"a": "x", "b": "y"},
		{"role": "worker", "z": "a", "c": "1"},
		{"x": "", "has": "", "all": "x"},
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos < 1 || se.Pos > len(in)+1 {
				t.Fatalf("Parse(%q): bad error %v", in, err)
			}
			return
		}
		out := s.String()
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(%q).String() = %q, which does not parse: %v", in, out, err)
		}
		if again.String() != out {
			t.Fatalf("String not stable: %q -> %q -> %q", in, out, again.String())
		}
		for _, l := range labelSets {
			if s.Matches(l) != again.Matches(l) {
				t.Fatalf("%q and its rendering %q disagree on %v", in, out, l)
			}
		}
	})
}
