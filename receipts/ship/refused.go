package ship

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// A NATS server refuses every bad user alike ("Authorization Violation"),
// whether its JWT expired, its account revokes it or the server knows no
// such account; the cause is in the server's log only. So when the servers
// refuse a .creds file, the collector names what the client can tell from
// the file itself: a user JWT past its expiry, a seed that is not the key
// the JWT names, or else the user and account to look up in the server's
// log (unknown account, or revoked).

// IsAuthError says the servers refused the credentials.
func IsAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// Refused is the error for servers refusing credentials c (err, from the
// client): it names what the .creds file shows (lookup reads the
// environment; now is the clock), else only "the credentials".
func Refused(c Credentials, lookup func(string) (string, bool), now time.Time, err error) error {
	if why := explainCreds(c, lookup, now); why != "" {
		return fmt.Errorf("the servers refuse %s: %w", why, err)
	}
	return fmt.Errorf("the servers refuse the credentials: %w", err)
}

// explainCreds explains a refusal of credentials c, or "" for
// credentials that are no .creds file.
func explainCreds(c Credentials, lookup func(string) (string, bool), now time.Time) string {
	var data []byte
	switch {
	case c.CredsFile != "":
		b, err := os.ReadFile(c.CredsFile)
		if err != nil {
			return ""
		}
		data = b
	case c.CredsEnv != "":
		v, _ := lookup(c.CredsEnv)
		data = []byte(v)
	default:
		return ""
	}
	token, err := nkeys.ParseDecoratedJWT(data)
	if err != nil {
		return ""
	}
	var claims struct {
		Subject   string `json:"sub"`
		Issuer    string `json:"iss"`
		Name      string `json:"name"`
		IssuedAt  int64  `json:"iat"`
		ExpiresAt int64  `json:"exp"`
		Nats      struct {
			IssuerAccount string `json:"issuer_account"`
		} `json:"nats"`
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	account := claims.Issuer
	if claims.Nats.IssuerAccount != "" {
		account = claims.Nats.IssuerAccount
	}
	who := fmt.Sprintf("user %s (%q) of account %s", claims.Subject, claims.Name, account)
	if claims.ExpiresAt != 0 && now.Unix() >= claims.ExpiresAt {
		return fmt.Sprintf("the %s: its JWT expired at %s", who, time.Unix(claims.ExpiresAt, 0).UTC().Format(time.RFC3339))
	}
	if kp, err := nkeys.ParseDecoratedUserNKey(data); err == nil {
		if pub, err := kp.PublicKey(); err == nil && pub != claims.Subject {
			return fmt.Sprintf("the creds' seed is user %s, not the %s its JWT names", pub, who)
		}
	}
	return fmt.Sprintf("the %s, JWT issued %s: the servers do not know that account, or it revokes this user (the server's log says which)",
		who, time.Unix(claims.IssuedAt, 0).UTC().Format(time.RFC3339))
}
