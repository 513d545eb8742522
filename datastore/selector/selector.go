// Package selector parses and evaluates label selectors in Calico's syntax, which
// IPPool.nodeSelector, BGPPeer.nodeSelector and BGPPeer.peerSelector use:
//
//	all()                    every label set
//	k == 'v', k != 'v'       equality; != also matches when k is absent
//	has(k), !has(k)          presence
//	k in {'a','b'}           membership; "not in" also matches when k is absent
//	k not in {'a','b'}
//	a && b, a || b, !a, (a)  logic, with ! binding tighter than && tighter than ||
//
// Strings take single or double quotes and have no escapes, as in Calico. An empty selector
// means all(), as it does for a pool's nodeSelector.
package selector

import (
	"fmt"
	"slices"
	"strings"
)

// Selector is a parsed selector. The zero value selects everything.
type Selector struct {
	root node
}

// All is the selector that matches every label set.
func All() Selector { return Selector{} }

// Matches reports whether a set of labels is selected. A nil map is an empty label set.
func (s Selector) Matches(labels map[string]string) bool {
	if s.root == nil {
		return true
	}
	return s.root.matches(labels)
}

// String renders the selector in canonical form: double quotes where possible, single
// spaces around operators, parentheses only where precedence needs them. Parsing the
// result yields the same selector.
func (s Selector) String() string {
	if s.root == nil {
		return "all()"
	}
	var b strings.Builder
	s.root.write(&b)
	return b.String()
}

// MustParse is Parse for selectors written into the program's own source; it panics on a
// syntax error, which can only be a programming mistake.
func MustParse(s string) Selector {
	sel, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return sel
}

// node is one term of a parsed selector.
type node interface {
	matches(labels map[string]string) bool
	write(b *strings.Builder)
	// prec is the binding strength of the node's outermost operator, used to decide where
	// String needs parentheses.
	prec() int
}

const (
	precOr = iota + 1
	precAnd
	precUnary
)

type allNode struct{}

func (allNode) matches(map[string]string) bool { return true }
func (allNode) write(b *strings.Builder)       { b.WriteString("all()") }
func (allNode) prec() int                      { return precUnary }

type hasNode struct{ key string }

func (n hasNode) matches(l map[string]string) bool { _, ok := l[n.key]; return ok }
func (n hasNode) write(b *strings.Builder)         { b.WriteString("has(" + n.key + ")") }
func (hasNode) prec() int                          { return precUnary }

// compareNode is k == 'v' or k != 'v'.
type compareNode struct {
	key, value string
	negate     bool
}

func (n compareNode) matches(l map[string]string) bool {
	v, ok := l[n.key]
	return (ok && v == n.value) != n.negate
}

func (n compareNode) write(b *strings.Builder) {
	op := " == "
	if n.negate {
		op = " != "
	}
	b.WriteString(n.key + op + quote(n.value))
}

func (compareNode) prec() int { return precUnary }

// inNode is k in {…} or k not in {…}.
type inNode struct {
	key    string
	values []string // sorted, unique
	negate bool
}

func (n inNode) matches(l map[string]string) bool {
	v, ok := l[n.key]
	_, found := slices.BinarySearch(n.values, v)
	return (ok && found) != n.negate
}

func (n inNode) write(b *strings.Builder) {
	b.WriteString(n.key)
	if n.negate {
		b.WriteString(" not in {")
	} else {
		b.WriteString(" in {")
	}
	for i, v := range n.values {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quote(v))
	}
	b.WriteString("}")
}

func (inNode) prec() int { return precUnary }

type notNode struct{ x node }

func (n notNode) matches(l map[string]string) bool { return !n.x.matches(l) }

func (n notNode) write(b *strings.Builder) {
	b.WriteString("!")
	switch n.x.(type) {
	case hasNode, allNode, notNode:
		n.x.write(b)
	default:
		b.WriteString("(")
		n.x.write(b)
		b.WriteString(")")
	}
}

func (notNode) prec() int { return precUnary }

type andNode struct{ xs []node }

func (n andNode) matches(l map[string]string) bool {
	for _, x := range n.xs {
		if !x.matches(l) {
			return false
		}
	}
	return true
}

func (n andNode) write(b *strings.Builder) { writeJoined(b, n.xs, " && ", precAnd) }
func (andNode) prec() int                  { return precAnd }

type orNode struct{ xs []node }

func (n orNode) matches(l map[string]string) bool {
	for _, x := range n.xs {
		if x.matches(l) {
			return true
		}
	}
	return false
}

func (n orNode) write(b *strings.Builder) { writeJoined(b, n.xs, " || ", precOr) }
func (orNode) prec() int                  { return precOr }

// writeJoined writes operands separated by op, parenthesizing those that bind less tightly
// than the operator itself (and, for clarity, nested operators of the same kind, which the
// parser flattens anyway).
func writeJoined(b *strings.Builder, xs []node, op string, prec int) {
	for i, x := range xs {
		if i > 0 {
			b.WriteString(op)
		}
		if x.prec() <= prec {
			b.WriteString("(")
			x.write(b)
			b.WriteString(")")
		} else {
			x.write(b)
		}
	}
}

// quote renders a string literal. Calico strings have no escapes, so a value that contains
// a double quote is written in single quotes (the parser guarantees it cannot contain both).
func quote(s string) string {
	if strings.Contains(s, `"`) {
		return "'" + s + "'"
	}
	return `"` + s + `"`
}

// SyntaxError is a selector that does not parse. Pos is the 1-based position (in bytes) of
// the offending character.
type SyntaxError struct {
	Selector string
	Pos      int
	Msg      string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("selector %q: at position %d: %s", e.Selector, e.Pos, e.Msg)
}
