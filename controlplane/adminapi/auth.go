package adminapi

import (
	"fmt"
	"net"
)

// Role is what a token may do (docs/api.md "Auth").
type Role int

const (
	RoleRead    Role = iota + 1 // GET only
	RoleOperate                 // weights, switch, rollout, rollback, drain
	RoleAdmin                   // everything
)

// ParseRole reads a role name as written in the Caddyfile.
func ParseRole(s string) (Role, error) {
	switch s {
	case "read":
		return RoleRead, nil
	case "operate":
		return RoleOperate, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("unknown role %q: use read, operate or admin", s)
}

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleOperate:
		return "operate"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Token is one named bearer token of the admin API.
type Token struct {
	Name   string
	Secret string
	Role   Role
}

// CheckListen refuses an admin API reachable from other hosts without
// tokens: without tokens every loopback caller is admin (docs/api.md "Auth").
func CheckListen(listen string, tokens []Token) error {
	if len(tokens) > 0 {
		return nil
	}
	if !IsLoopbackListen(listen) {
		return fmt.Errorf("admin_listen %s is not a loopback address and no token is configured: add token lines or listen on 127.0.0.1", listen)
	}
	return nil
}

// IsLoopbackListen reports whether a listen address only accepts loopback
// connections.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
