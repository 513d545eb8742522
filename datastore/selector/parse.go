package selector

import (
	"fmt"
	"slices"
	"strings"
)

// maxDepth bounds parenthesis and negation nesting, so that a hostile selector written
// straight into etcd cannot exhaust the daemon's stack.
const maxDepth = 100

// Parse parses a selector. An empty (or all-blank) selector is all(). Errors are
// *SyntaxError and name the position of the problem.
func Parse(s string) (Selector, error) {
	p := &parser{src: s}
	p.skipSpace()
	if p.pos == len(p.src) {
		return Selector{}, nil
	}
	root, err := p.parseOr(0)
	if err != nil {
		return Selector{}, err
	}
	p.skipSpace()
	if p.pos < len(p.src) {
		return Selector{}, p.errorf("unexpected %s after a complete expression (missing && or ||?)", p.describe())
	}
	return Selector{root: root}, nil
}

type parser struct {
	src string
	pos int
}

func (p *parser) errorf(format string, args ...any) error {
	return &SyntaxError{Selector: p.src, Pos: p.pos + 1, Msg: fmt.Sprintf(format, args...)}
}

// describe names what is at the current position, for error messages.
func (p *parser) describe() string {
	if p.pos >= len(p.src) {
		return "end of selector"
	}
	return fmt.Sprintf("%q", p.src[p.pos:p.pos+1])
}

func (p *parser) skipSpace() {
	for p.pos < len(p.src) && strings.IndexByte(" \t\r\n", p.src[p.pos]) >= 0 {
		p.pos++
	}
}

// consume skips blanks and then tok if it is next, reporting whether it was.
// peekIs reports whether tok comes next, without consuming it.
func (p *parser) peekIs(tok string) bool {
	p.skipSpace()
	return strings.HasPrefix(p.src[p.pos:], tok)
}

func (p *parser) consume(tok string) bool {
	p.skipSpace()
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *parser) expect(tok, context string) error {
	if !p.consume(tok) {
		return p.errorf("expected %q %s, found %s", tok, context, p.describe())
	}
	return nil
}

func (p *parser) parseOr(depth int) (node, error) {
	return p.parseChain(depth, "||", p.parseAnd,
		func(n node) ([]node, bool) { o, ok := n.(orNode); return o.xs, ok },
		func(xs []node) node { return orNode{xs: xs} })
}

func (p *parser) parseAnd(depth int) (node, error) {
	return p.parseChain(depth, "&&", p.parseUnary,
		func(n node) ([]node, bool) { a, ok := n.(andNode); return a.xs, ok },
		func(xs []node) node { return andNode{xs: xs} })
}

// parseChain parses operands joined by op. Operands that are themselves op-chains are
// merged ((a && b) && c is a && b && c), so that every selector has one canonical String.
func (p *parser) parseChain(depth int, op string, operand func(int) (node, error),
	members func(node) ([]node, bool), join func([]node) node) (node, error) {
	first, err := operand(depth)
	if err != nil {
		return nil, err
	}
	if !p.peekIs(op) {
		return first, nil
	}
	var flat []node
	add := func(x node) {
		if inner, ok := members(x); ok {
			flat = append(flat, inner...)
		} else {
			flat = append(flat, x)
		}
	}
	add(first)
	for p.consume(op) {
		x, err := operand(depth)
		if err != nil {
			return nil, err
		}
		add(x)
	}
	return join(flat), nil
}

func (p *parser) parseUnary(depth int) (node, error) {
	if depth >= maxDepth {
		return nil, p.errorf("nesting deeper than %d levels", maxDepth)
	}
	p.skipSpace()
	if p.pos < len(p.src) && p.src[p.pos] == '!' && !strings.HasPrefix(p.src[p.pos:], "!=") {
		p.pos++
		x, err := p.parseUnary(depth + 1)
		if err != nil {
			return nil, err
		}
		return notNode{x: x}, nil
	}
	return p.parsePrimary(depth)
}

func (p *parser) parsePrimary(depth int) (node, error) {
	p.skipSpace()
	if p.pos == len(p.src) {
		return nil, p.errorf("unexpected end of selector, expected an expression")
	}
	if p.src[p.pos] == '(' {
		p.pos++
		x, err := p.parseOr(depth + 1)
		if err != nil {
			return nil, err
		}
		if err := p.expect(")", "to close the parenthesis"); err != nil {
			return nil, err
		}
		return x, nil
	}
	start := p.pos
	ident := p.identifier()
	if ident == "" {
		return nil, p.errorf("unexpected %s, expected a label key, has(), all(), ! or (", p.describe())
	}
	// all() and has(k) are functions only when a parenthesis follows, so that labels named
	// "all" or "has" can still be compared.
	if ident == "all" && p.consume("(") {
		if err := p.expect(")", "after all("); err != nil {
			return nil, err
		}
		return allNode{}, nil
	}
	if ident == "has" && p.consume("(") {
		p.skipSpace()
		key := p.identifier()
		if key == "" {
			return nil, p.errorf("expected a label key inside has(), found %s", p.describe())
		}
		if err := p.expect(")", "after the label key in has("); err != nil {
			return nil, err
		}
		return hasNode{key: key}, nil
	}
	return p.parseComparison(ident, start)
}

func (p *parser) parseComparison(key string, keyPos int) (node, error) {
	switch {
	case p.consume("=="):
		v, err := p.stringLiteral()
		if err != nil {
			return nil, err
		}
		return compareNode{key: key, value: v}, nil
	case p.consume("!="):
		v, err := p.stringLiteral()
		if err != nil {
			return nil, err
		}
		return compareNode{key: key, value: v, negate: true}, nil
	}
	p.skipSpace()
	opPos := p.pos
	switch op := p.identifier(); op {
	case "in":
		vs, err := p.set()
		if err != nil {
			return nil, err
		}
		return inNode{key: key, values: vs}, nil
	case "not":
		p.skipSpace()
		if p.identifier() != "in" {
			return nil, p.errorf(`expected "in" after "not"`)
		}
		vs, err := p.set()
		if err != nil {
			return nil, err
		}
		return inNode{key: key, values: vs, negate: true}, nil
	default:
		p.pos = opPos
		if p.pos == len(p.src) {
			return nil, p.errorf("label key %q at position %d has no operator: expected ==, !=, in or not in (or has(%s))", key, keyPos+1, key)
		}
		return nil, p.errorf("unexpected %s after label key %q, expected ==, !=, in or not in", p.describe(), key)
	}
}

// identifier reads a label key: the characters Kubernetes allows in label keys.
func (p *parser) identifier() string {
	start := p.pos
	for p.pos < len(p.src) && isKeyChar(p.src[p.pos]) {
		p.pos++
	}
	return p.src[start:p.pos]
}

func isKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '.' || c == '/' || c == '-'
}

func (p *parser) stringLiteral() (string, error) {
	p.skipSpace()
	if p.pos == len(p.src) || (p.src[p.pos] != '\'' && p.src[p.pos] != '"') {
		return "", p.errorf("expected a quoted string, found %s", p.describe())
	}
	q := p.src[p.pos]
	open := p.pos
	end := strings.IndexByte(p.src[open+1:], q)
	if end < 0 {
		return "", p.errorf("unterminated string starting here")
	}
	p.pos = open + 1 + end + 1
	return p.src[open+1 : open+1+end], nil
}

// set reads {'a', 'b'}; the values come back sorted and without duplicates.
func (p *parser) set() ([]string, error) {
	if err := p.expect("{", "to open the set of values"); err != nil {
		return nil, err
	}
	var vs []string
	if !p.consume("}") {
		for {
			v, err := p.stringLiteral()
			if err != nil {
				return nil, err
			}
			vs = append(vs, v)
			if p.consume("}") {
				break
			}
			if err := p.expect(",", "or } in the set of values"); err != nil {
				return nil, err
			}
		}
	}
	slices.Sort(vs)
	return slices.Compact(vs), nil
}
