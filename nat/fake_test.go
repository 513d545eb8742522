package nat

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// builtinChains are the chains iptables creates with a table.
var builtinChains = map[string][]string{
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
}

// fakeTables is an in-memory iptables for the unit tests: it applies iptables-restore
// --noflush scripts with the kernel's rules (a declared chain that exists is flushed,
// "-D <spec>" removes the first identical rule and fails when there is none, a chain in use
// cannot be deleted, each table's COMMIT is all or nothing) and prints iptables-save text.
type fakeTables map[string]*tableState

func (f fakeTables) table(name string) *tableState {
	t, ok := f[name]
	if !ok {
		t = newTableState(name)
		for _, c := range builtinChains[name] {
			t.chains[c] = nil
			t.policies[c] = "ACCEPT"
		}
	}
	return t
}

func cloneTable(t *tableState) *tableState {
	c := newTableState(t.name)
	maps.Copy(c.policies, t.policies)
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

// apply runs both transactions of a plan, failing the test if one is refused.
func (f fakeTables) apply(t testing.TB, p plan) {
	t.Helper()
	for _, tx := range []transaction{p.main, p.sweep} {
		if err := f.restore(p.script(tx)); err != nil {
			t.Fatalf("restore of the plan failed: %v\n%s", err, p.script(tx))
		}
	}
}

func (f fakeTables) restore(script string) error {
	if script == "" {
		return nil
	}
	var cur *tableState
	for n, line := range strings.Split(strings.TrimSpace(script), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, a...))
		}
		switch {
		case strings.HasPrefix(line, "*"):
			cur = cloneTable(f.table(line[1:]))
		case line == "COMMIT":
			f[cur.name] = cur
			cur = nil
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			cur.chains[name] = nil // declaring an existing chain flushes it, as --noflush does
		default:
			op, rest, _ := strings.Cut(line, " ")
			chain, spec, _ := strings.Cut(rest, " ")
			rules, ok := cur.chains[chain]
			if !ok {
				return fail("no chain %s", chain)
			}
			if target, ok := jumpTarget(spec); ok && isTabbyChain(target) {
				if _, ok := cur.chains[target]; !ok {
					return fail("no chain %s to jump to", target)
				}
			}
			switch op {
			case "-A":
				cur.chains[chain] = append(rules, spec)
			case "-I":
				posText, s, _ := strings.Cut(spec, " ")
				pos, err := strconv.Atoi(posText)
				if err != nil || pos < 1 || pos > len(rules)+1 {
					return fail("bad position")
				}
				cur.chains[chain] = slices.Insert(rules, pos-1, s)
			case "-D":
				i := slices.Index(rules, spec)
				if i < 0 {
					return fail("no such rule")
				}
				cur.chains[chain] = slices.Delete(rules, i, i+1)
			case "-F":
				cur.chains[chain] = nil
			case "-X":
				if len(rules) > 0 {
					return fail("chain not empty")
				}
				for c, rs := range cur.chains {
					for _, r := range rs {
						if t, ok := jumpTarget(r); ok && t == chain {
							return fail("chain in use by %s", c)
						}
					}
				}
				delete(cur.chains, chain)
			default:
				return fail("unknown command")
			}
		}
	}
	if cur != nil {
		return fmt.Errorf("no COMMIT")
	}
	return nil
}

func jumpTarget(spec string) (string, bool) {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" {
			return f[i+1], true
		}
	}
	return "", false
}

// save prints the tables as iptables-save does (without its comment lines).
func (f fakeTables) save() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(f)) {
		t := f[name]
		fmt.Fprintf(&b, "*%s\n", name)
		var user []string
		for _, c := range builtinChains[name] {
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, t.policies[c])
		}
		for c := range t.chains {
			if _, builtin := t.policies[c]; !builtin {
				user = append(user, c)
			}
		}
		slices.Sort(user)
		for _, c := range user {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range append(slices.Clone(builtinChains[name]), user...) {
			for _, r := range t.chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
