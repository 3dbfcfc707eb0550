package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// node is a transport under test with its captured log.
type node struct {
	*Transport
	logs *observer.ObservedLogs
}

// listenNode starts a transport on 127.0.0.1:0 and closes it at the end of the
// test.
func listenNode(t *testing.T, auth Auth, timeout time.Duration) *node {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	tr, err := Listen(Config{Listen: "127.0.0.1:0", Auth: auth, Logger: zap.New(core), Timeout: timeout})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return &node{Transport: tr, logs: logs}
}

// echoReply is what the echo handler answers.
type echoReply struct {
	From string          `json:"from"`
	Body json.RawMessage `json:"body"`
}

func echo(_ context.Context, from string, req json.RawMessage) (any, error) {
	return echoReply{From: from, Body: req}, nil
}

// checkNoGoroutineLeak fails the test when, at its end, more goroutines run
// than at its start, after a settle period.
func checkNoGoroutineLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: %d at start, %d at end:\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// checkLogsFree fails when any captured log entry mentions one of the secrets.
func checkLogsFree(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log entry leaks a secret: %s", line)
			}
		}
	}
}

// rawDial opens an unauthenticated TCP connection to a transport.
func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testCA is a certificate authority made up for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial int64

func newSerial() *big.Int { serial++; return big.NewInt(serial) }

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// nodeCert issues a node certificate usable on both sides, with no host
// names or IPs: peers are not checked by name.
func (ca *testCA) nodeCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// nodeTLS is the TLS config of a node whose certificate comes from issuer and
// which trusts peers from trust.
func nodeTLS(t *testing.T, issuer, trust *testCA, name string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{issuer.nodeCert(t, name)}, RootCAs: trust.pool}
}

func nodeTLSNoCert(ca *testCA) *tls.Config { return &tls.Config{RootCAs: ca.pool} }

func nodeTLSNoCA(t *testing.T, ca *testCA) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{ca.nodeCert(t, "n")}}
}
