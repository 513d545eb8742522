// Package secret reads BGP session passwords from the secrets directory (SPEC §7) and
// keeps them out of every printout. tabbyd's speaker and tabbyctl's diagnosis read them
// the same way, and tabbyctl does not need the BGP speaker for it.
package secret

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// MaxPasswordLength is the longest TCP-MD5 key the kernel accepts (TCP_MD5SIG_MAXKEYLEN).
const MaxPasswordLength = 80

// redacted is what a Secret prints as, wherever it is printed.
const redacted = "[redacted]"

// Secret is a BGP session password. It prints, logs and marshals as "[redacted]" so that a
// Peer can be logged, printed with %v or %#v, or encoded without leaking the password;
// only Reveal returns the text, to hand the key to GoBGP or to the kernel (TCP_MD5SIG).
type Secret struct{ text string }

// New wraps a password.
func New(text string) Secret { return Secret{text: text} }

// Reveal returns the password itself.
func (s Secret) Reveal() string { return s.text }

// IsZero reports whether there is no password.
func (s Secret) IsZero() bool { return s.text == "" }

// String hides the password.
func (s Secret) String() string {
	if s.text == "" {
		return ""
	}
	return redacted
}

// GoString hides the password from %#v.
func (s Secret) GoString() string { return `bgp.Secret{"` + s.String() + `"}` }

// LogValue hides the password from log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText hides the password from encoders (JSON, YAML, text).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Read reads the password Calico's secretKeyRef{name, key} names, from the file
// <secretsDir>/<name>/<key> (SPEC §7). The trailing newline an editor or `echo` leaves is
// not part of the password. Errors name the file but never contain its content.
func Read(secretsDir, name, key string) (Secret, error) {
	if err := checkSecretPathElement("name", name); err != nil {
		return Secret{}, err
	}
	if err := checkSecretPathElement("key", key); err != nil {
		return Secret{}, err
	}
	path := filepath.Join(secretsDir, name, key)
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			// The os error text is "open <path>: <reason>"; keep it, it holds no secret.
			return Secret{}, fmt.Errorf("secret %s/%s: %w", name, key, pe)
		}
		return Secret{}, fmt.Errorf("secret %s/%s: cannot read %s", name, key, path)
	}
	text := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case text == "":
		return Secret{}, fmt.Errorf("secret %s/%s: %s is empty", name, key, path)
	case len(text) > MaxPasswordLength:
		return Secret{}, fmt.Errorf("secret %s/%s: the password in %s is longer than %d characters", name, key, path, MaxPasswordLength)
	}
	return New(text), nil
}

// checkSecretPathElement refuses names that would leave the secrets directory: a secret
// reference comes from etcd, and must not be a way to read any file on the host.
func checkSecretPathElement(what, s string) error {
	if s == "" || s == "." || s == ".." || strings.ContainsAny(s, `/\`) || strings.ContainsRune(s, 0) {
		return fmt.Errorf("secretKeyRef %s %q is not a plain file name", what, s)
	}
	return nil
}
