package nat

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
)

// tableState is one iptables table as iptables-save printed it.
type tableState struct {
	name string
	// policies holds the built-in chains and their policy (ACCEPT, DROP).
	policies map[string]string
	// chains holds every chain, built-in and user-defined, with its rules in order, each
	// without the leading "-A <chain> ".
	chains map[string][]string
}

func newTableState(name string) *tableState {
	return &tableState{name: name, policies: map[string]string{}, chains: map[string][]string{}}
}

// parseSave reads the output of iptables-save into one state per table. It refuses input it
// does not understand rather than guess, because a wrong picture of the kernel would make the
// reconciler delete or duplicate rules.
func parseSave(out string) (map[string]*tableState, error) {
	tables := map[string]*tableState{}
	var cur *tableState
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = newTableState(line[1:])
			tables[cur.name] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d: %q outside a table", n, line)
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain line %q", n, line)
			}
			if _, ok := cur.chains[fields[0]]; !ok {
				cur.chains[fields[0]] = nil
			}
			if fields[1] != "-" {
				cur.policies[fields[0]] = fields[1]
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[len("-A "):], " ")
			cur.chains[chain] = append(cur.chains[chain], spec)
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", n, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return tables, nil
}

var commentID = regexp.MustCompile(`--comment "?` + regexp.QuoteMeta(CommentPrefix) + `([A-Za-z0-9_-]+)"?`)

// ruleID returns the id of a rule's "tabby:<id>" comment; ok is false for a rule that is
// not tabby's.
func ruleID(spec string) (id string, ok bool) {
	m := commentID.FindStringSubmatch(spec)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// isTabbyChain tells tabby's chains from everyone else's.
func isTabbyChain(name string) bool { return strings.HasPrefix(name, ChainPrefix) }
