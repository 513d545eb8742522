package nat

import (
	"slices"
	"strconv"
	"strings"
)

// plan is what one table needs to go from what the kernel has to what tabby wants: the
// commands of iptables-restore --noflush transactions, and a line per change for the log.
//
// A transaction is atomic (legacy iptables replaces the whole table at once, nf_tables
// commits one batch), so a rule that is replaced or moved is never missing as far as
// packets can tell, whatever the order of the commands inside it. Commands are still
// written deletes first because rule positions of later inserts count on them.
//
// Leftover tabby chains are removed in a second transaction (sweep): the kernel refuses to
// delete a chain that someone else's rule still jumps to, and such a leftover must not hold
// back the rules that are wanted.
type plan struct {
	table       string
	main, sweep transaction
}

// transaction is one iptables-restore COMMIT's worth of commands.
type transaction struct {
	lines   []string
	changes []string
}

func (t *transaction) add(line, change string) {
	t.lines = append(t.lines, line)
	t.changes = append(t.changes, change)
}

func (p *plan) empty() bool { return len(p.main.lines) == 0 && len(p.sweep.lines) == 0 }

// changes lists what the plan does, main transaction first.
func (p *plan) changes() []string { return append(slices.Clone(p.main.changes), p.sweep.changes...) }

// script renders a transaction of the plan as iptables-restore input, "" when it is empty.
func (p *plan) script(t transaction) string {
	if len(t.lines) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*" + p.table + "\n")
	for _, l := range t.lines {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// planTable compares one table as the kernel has it (cur, nil when the table does not exist)
// with tabby's wanted part of it. Nothing is flushed wholesale: chains that already hold the
// wanted rules are left alone, so a restarted tabbyd adopts what a previous run installed.
//
//   - Wanted chains that are missing are created; a wanted chain's rules are made exactly the
//     wanted ones, in order (rules nobody wants in tabby's chains are removed, whoever added
//     them).
//   - In every other chain, only rules with a tabby comment are touched: the hook rule is
//     kept (and, where it must be, put back first); any other tabby rule is removed.
//   - tabby chains no longer wanted are flushed and deleted (in the sweep transaction), after
//     tabby's rules jumping to them are gone.
func planTable(cur *tableState, want tableSpec) plan {
	if cur == nil {
		cur = newTableState(want.table)
	}
	p := plan{table: want.table}
	// Missing chains are declared before any rule is written, so jumps between tabby's
	// chains resolve whatever their order. Chains that exist are never declared: in a
	// --noflush restore that would flush them.
	wanted := map[string]bool{}
	for _, c := range want.chains {
		wanted[c.name] = true
		if _, ok := cur.chains[c.name]; !ok {
			p.main.add(":"+c.name+" - [0:0]", "create chain "+c.name)
		}
	}
	for _, c := range want.chains {
		p.syncChain(c, cur.chains[c.name])
	}
	hooks := map[string]hookSpec{}
	for _, h := range want.hooks {
		hooks[h.chain] = h
	}
	others := make([]string, 0, len(cur.chains))
	for name := range cur.chains {
		if !isTabbyChain(name) {
			others = append(others, name)
		}
	}
	for name := range hooks {
		if _, ok := cur.chains[name]; !ok {
			others = append(others, name) // a built-in chain of a table not created yet
		}
	}
	slices.Sort(others)
	for _, name := range others {
		h, ok := hooks[name]
		p.syncHook(name, cur.chains[name], h, ok)
	}
	var stale []string
	for name := range cur.chains {
		if isTabbyChain(name) && !wanted[name] {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	// Flush them all before deleting any: one stale chain may jump to another.
	for _, name := range stale {
		if len(cur.chains[name]) > 0 {
			p.sweep.add("-F "+name, "flush chain "+name+" (no longer wanted)")
		}
	}
	for _, name := range stale {
		p.sweep.add("-X "+name, "delete chain "+name+" (no longer wanted)")
	}
	return p
}

// syncChain makes one of tabby's chains hold exactly c.rules, in order.
func (p *plan) syncChain(c chainSpec, have []string) {
	index := make(map[string]int, len(c.rules))
	for i, r := range c.rules {
		index[r.id] = i
	}
	lastPos := map[string]int{} // wanted rule id → position of its last copy in the chain
	haveSpec := map[string]string{}
	var deletes []string
	for pos, spec := range have {
		id, ok := ruleID(spec)
		i, want := index[id]
		if !ok || !want || !sameRule(spec, c.rules[i].spec) {
			deletes = append(deletes, spec)
			continue
		}
		if _, dup := lastPos[id]; dup {
			// "-D <spec>" removes the first of identical copies, so the one that stays is
			// the last: that is the position that counts for the order below.
			deletes = append(deletes, spec)
		}
		lastPos[id] = pos
		haveSpec[id] = spec
	}
	kept := make([]string, 0, len(lastPos))
	for id := range lastPos {
		kept = append(kept, id)
	}
	slices.SortFunc(kept, func(a, b string) int { return lastPos[a] - lastPos[b] })
	inOrder := slices.IsSortedFunc(kept, func(a, b string) int { return index[a] - index[b] })
	if !inOrder {
		// Out of order: take the kept rules out too and put everything back in order, in the
		// same atomic transaction.
		for _, id := range kept {
			deletes = append(deletes, haveSpec[id])
		}
		clear(lastPos)
	}
	for _, spec := range deletes {
		p.main.add("-D "+c.name+" "+spec, "delete rule "+c.name+" "+spec)
	}
	length := len(lastPos)
	for i, r := range c.rules {
		if _, ok := lastPos[r.id]; ok {
			continue
		}
		// Every wanted rule before r is in place at positions 1..i by now.
		if i == length {
			p.main.add("-A "+c.name+" "+r.spec, "add rule "+c.name+" "+r.spec)
		} else {
			p.main.add("-I "+c.name+" "+strconv.Itoa(i+1)+" "+r.spec, "insert rule "+c.name+" "+r.spec)
		}
		length++
	}
}

// syncHook handles a chain that is not tabby's: its tabby rules must be exactly the hook (if
// the chain has one), first where the hook says so; any other rule is none of tabby's business.
func (p *plan) syncHook(chain string, have []string, h hookSpec, hasHook bool) {
	type found struct {
		pos  int
		spec string
		good bool
	}
	var ours []found
	for pos, spec := range have {
		if id, ok := ruleID(spec); ok {
			ours = append(ours, found{pos: pos, spec: spec, good: hasHook && id == h.rule.id && sameRule(spec, h.rule.spec)})
		}
	}
	if !hasHook {
		for _, f := range ours {
			p.main.add("-D "+chain+" "+f.spec, "delete rule "+chain+" "+f.spec)
		}
		return
	}
	if h.first {
		if len(ours) == 1 && ours[0].good && ours[0].pos == 0 {
			return
		}
		// Wrong, duplicated, or no longer first (something was inserted before it): remove
		// tabby's rules and put the hook back at the top, atomically.
		for _, f := range ours {
			p.main.add("-D "+chain+" "+f.spec, "delete rule "+chain+" "+f.spec)
		}
		p.main.add("-I "+chain+" 1 "+h.rule.spec, "insert rule "+chain+" at 1 "+h.rule.spec)
		return
	}
	keptOne := false
	for _, f := range ours {
		if f.good && !keptOne {
			keptOne = true
			continue
		}
		p.main.add("-D "+chain+" "+f.spec, "delete rule "+chain+" "+f.spec)
	}
	if !keptOne {
		p.main.add("-I "+chain+" 1 "+h.rule.spec, "insert rule "+chain+" at 1 "+h.rule.spec)
	}
}

// sameRule compares a rule read back from iptables-save with the wanted one, ignoring quoting
// and spacing, which differ between iptables versions.
func sameRule(a, b string) bool {
	norm := func(s string) string { return strings.Join(strings.Fields(strings.ReplaceAll(s, `"`, "")), " ") }
	return norm(a) == norm(b)
}
