package bgp

import "github.com/tabby-net/tabby/bgp/secret"

// MaxPasswordLength is the longest TCP-MD5 key the kernel accepts (TCP_MD5SIG_MAXKEYLEN).
const MaxPasswordLength = secret.MaxPasswordLength

// Secret is a BGP session password; it prints as "[redacted]" (see package secret).
type Secret = secret.Secret

// NewSecret wraps a password.
func NewSecret(text string) Secret { return secret.New(text) }

// readSecret reads the password Calico's secretKeyRef{name, key} names, from the file
// <secretsDir>/<name>/<key> (SPEC §7).
func readSecret(secretsDir, name, key string) (Secret, error) {
	return secret.Read(secretsDir, name, key)
}
