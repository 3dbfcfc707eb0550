package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
)

// The handshake (DESIGN.md has the full picture):
//
//	client → server  hello: "cbpx" version purpose nonce(32) len(1) advertised-address
//	server → client  status(1) nonce(32) proof(32)   proof = HMAC(secret, "srv" transcript)
//	client → server  status(1) proof(32)             proof = HMAC(secret, "cli" transcript)
//	server → client  status(1)
//
// transcript = version purpose client-nonce server-nonce len address binding,
// where binding is the TLS exporter value under mutual TLS and empty without.
const (
	handshakeMagic  = "cbpx"
	protocolVersion = 1
	nonceSize       = 32
	proofSize       = sha256.Size
	helloFixedSize  = len(handshakeMagic) + 2 + nonceSize + 1

	purposeRaft byte = 1
	purposeRPC  byte = 2
)

// Status bytes. A server refuses an unsupported hello with a status before
// any proof; either side answers a wrong proof with statusBadProof so that the
// other can say what is wrong.
const (
	statusOK byte = iota
	statusBadVersion
	statusBadPurpose
	statusBadProof
)

// hello is the client's first message.
type hello struct {
	version byte
	purpose byte
	nonce   [nonceSize]byte
	addr    string // the client's advertised address
}

func (h *hello) marshal() []byte {
	b := make([]byte, 0, helloFixedSize+len(h.addr))
	b = append(b, handshakeMagic...)
	b = append(b, h.version, h.purpose)
	b = append(b, h.nonce[:]...)
	b = append(b, byte(len(h.addr)))
	return append(b, h.addr...)
}

// readHello parses a hello. It checks the framing and the address, not the
// version or purpose, which the server answers with a status.
func readHello(r io.Reader) (hello, error) {
	var h hello
	var fixed [helloFixedSize]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		if err == io.EOF {
			return h, err // closed without a word: a port probe, not an error
		}
		return h, fmt.Errorf("reading hello: %w", err)
	}
	if string(fixed[:len(handshakeMagic)]) != handshakeMagic {
		return h, errors.New("not a cbproxy cluster client (bad magic)")
	}
	b := fixed[len(handshakeMagic):]
	h.version, h.purpose = b[0], b[1]
	copy(h.nonce[:], b[2:2+nonceSize])
	addr := make([]byte, b[2+nonceSize])
	if _, err := io.ReadFull(r, addr); err != nil {
		return h, fmt.Errorf("reading hello: %w", err)
	}
	if err := checkAddr(string(addr)); err != nil {
		return h, err
	}
	h.addr = string(addr)
	return h, nil
}

// checkAddr accepts a host:port that can name a peer.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("bad advertised address %q in hello", addr)
	}
	for _, c := range []byte(addr) {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("bad advertised address %q in hello", addr)
		}
	}
	return nil
}

// proof is HMAC-SHA256 over the transcript, labelled by side so that one
// side's proof can never be reflected as the other's.
func proof(secret []byte, label string, h *hello, serverNonce, binding []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write([]byte{h.version, h.purpose})
	m.Write(h.nonce[:])
	m.Write(serverNonce)
	m.Write([]byte{byte(len(h.addr))})
	m.Write([]byte(h.addr))
	m.Write(binding)
	return m.Sum(nil)
}

// clientHandshake authenticates a dialed connection: it proves the secret to
// the server and checks the server's proof.
func clientHandshake(rw io.ReadWriter, secret []byte, purpose byte, self string, binding []byte) error {
	if len(self) > 255 {
		return fmt.Errorf("advertised address %q is longer than 255 bytes", self)
	}
	h := hello{version: protocolVersion, purpose: purpose, addr: self}
	if _, err := rand.Read(h.nonce[:]); err != nil {
		return err
	}
	if _, err := rw.Write(h.marshal()); err != nil {
		return err
	}
	var challenge [1 + nonceSize + proofSize]byte
	if _, err := io.ReadFull(rw, challenge[:1]); err != nil {
		return err
	}
	switch challenge[0] {
	case statusOK:
	case statusBadVersion:
		return fmt.Errorf("peer does not speak cluster protocol version %d (mixed cbproxy versions?)", protocolVersion)
	default:
		return fmt.Errorf("peer refused the handshake (status %d)", challenge[0])
	}
	if _, err := io.ReadFull(rw, challenge[1:]); err != nil {
		return err
	}
	serverNonce := challenge[1 : 1+nonceSize]
	want := proof(secret, "srv", &h, serverNonce, binding)
	if !hmac.Equal(want, challenge[1+nonceSize:]) {
		// Tell the server, so that its log says why, then give up.
		_, _ = rw.Write(append([]byte{statusBadProof}, make([]byte, proofSize)...))
		return fmt.Errorf("%w: the peer could not prove it knows the cluster secret (is cluster_secret the same on every node?)", ErrAuth)
	}
	reply := append([]byte{statusOK}, proof(secret, "cli", &h, serverNonce, binding)...)
	if _, err := rw.Write(reply); err != nil {
		return err
	}
	var verdict [1]byte
	if _, err := io.ReadFull(rw, verdict[:]); err != nil {
		return err
	}
	if verdict[0] != statusOK {
		return fmt.Errorf("%w: the peer rejected our proof of the cluster secret (is cluster_secret the same on every node?)", ErrAuth)
	}
	return nil
}

// serverHandshake authenticates an accepted connection and returns the
// client's hello. admit may refuse the client by its claimed address before
// any answer. The returned hello's addr is set as soon as it was read, also
// on error, for the log.
func serverHandshake(rw io.ReadWriter, secret []byte, binding []byte, admit func(addr string) error) (hello, error) {
	h, err := readHello(rw)
	if err != nil {
		return hello{}, err
	}
	if err := admit(h.addr); err != nil {
		return h, err
	}
	if h.version != protocolVersion {
		_, _ = rw.Write([]byte{statusBadVersion})
		return h, fmt.Errorf("unsupported cluster protocol version %d (mixed cbproxy versions?)", h.version)
	}
	if h.purpose != purposeRaft && h.purpose != purposeRPC {
		_, _ = rw.Write([]byte{statusBadPurpose})
		return h, fmt.Errorf("unknown connection purpose %d", h.purpose)
	}
	var serverNonce [nonceSize]byte
	if _, err := rand.Read(serverNonce[:]); err != nil {
		return h, err
	}
	challenge := make([]byte, 0, 1+nonceSize+proofSize)
	challenge = append(challenge, statusOK)
	challenge = append(challenge, serverNonce[:]...)
	challenge = append(challenge, proof(secret, "srv", &h, serverNonce[:], binding)...)
	if _, err := rw.Write(challenge); err != nil {
		return h, err
	}
	var reply [1 + proofSize]byte
	if _, err := io.ReadFull(rw, reply[:]); err != nil {
		return h, fmt.Errorf("reading proof: %w", err)
	}
	if reply[0] != statusOK {
		return h, fmt.Errorf("%w: the peer rejected our proof of the cluster secret (is cluster_secret the same on every node?)", ErrAuth)
	}
	if !hmac.Equal(proof(secret, "cli", &h, serverNonce[:], binding), reply[1:]) {
		_, _ = rw.Write([]byte{statusBadProof})
		return h, fmt.Errorf("%w: the peer could not prove it knows the cluster secret (is cluster_secret the same on every node?)", ErrAuth)
	}
	if _, err := rw.Write([]byte{statusOK}); err != nil {
		return h, err
	}
	return h, nil
}
