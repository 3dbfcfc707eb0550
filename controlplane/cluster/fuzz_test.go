package cluster

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzHandshake feeds arbitrary client bytes to the server side of the
// handshake: it must never panic and never authenticate, since the client
// cannot know the server's nonce in advance.
func FuzzHandshake(f *testing.F) {
	valid := hello{version: protocolVersion, purpose: purposeRPC, addr: "127.0.0.1:7001"}
	good := valid.marshal()
	f.Add(good)
	f.Add(append(append([]byte{}, good...), make([]byte, 1+proofSize)...))
	f.Add(append(append([]byte{}, good...), append([]byte{statusBadProof}, make([]byte, proofSize)...)...))
	f.Add((&hello{version: 9, purpose: purposeRaft, addr: "n:1"}).marshal())
	f.Add((&hello{version: protocolVersion, purpose: 0, addr: "n:1"}).marshal())
	f.Add((&hello{version: protocolVersion, purpose: purposeRaft, addr: "no-port"}).marshal())
	f.Add((&hello{version: protocolVersion, purpose: purposeRaft, addr: "a b:1"}).marshal())
	f.Add(good[:len(good)-2])                  // the address cut short
	f.Add(append([]byte("HTTP"), good[4:]...)) // a whole hello, bad magic
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05}) // a TLS record header
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, secret := range [][]byte{[]byte("s3cret"), nil} {
			var out bytes.Buffer
			rw := struct {
				io.Reader
				io.Writer
			}{bytes.NewReader(data), &out}
			if _, err := serverHandshake(rw, secret, nil, func(string) error { return nil }); err == nil {
				t.Fatalf("client bytes %x authenticated", data)
			}
			// The server says at most: a status, or a status, nonce, proof
			// and a verdict.
			if out.Len() > 1+nonceSize+proofSize+1 {
				t.Fatalf("server wrote %d bytes", out.Len())
			}
		}
	})
}

// FuzzFrame decodes arbitrary bytes as a stream of RPC frames: no panic, no
// frame over the limit, and every frame read re-encodes to the same bytes.
func FuzzFrame(f *testing.F) {
	frame := func(payload string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
		return append(b, payload...)
	}
	f.Add(frame(`{"id":1,"method":"echo","body":{"a":1},"timeout_ms":500}`))
	f.Add(append(frame(`{"id":1,"method":"m","body":null}`), frame(`{"id":2,"method":"m","body":[1,2]}`)...))
	f.Add(frame(`{"id":"x"}`))
	f.Add(frame(``))
	f.Add(binary.BigEndian.AppendUint32(nil, MaxFrameSize+1))
	f.Add(binary.BigEndian.AppendUint32(nil, 100)) // truncated
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			start := len(data) - r.Len()
			payload, err := readFrame(r)
			if err != nil {
				if errors.Is(err, errFrameTooLarge) && binary.BigEndian.Uint32(data[start:]) <= MaxFrameSize {
					t.Fatalf("frame at %d refused as too large", start)
				}
				return
			}
			if len(payload) > MaxFrameSize {
				t.Fatalf("frame of %d bytes read", len(payload))
			}
			var buf bytes.Buffer
			if err := writeFrame(&buf, payload); err != nil {
				t.Fatalf("writeFrame: %v", err)
			}
			again, err := readFrame(&buf)
			if err != nil || !bytes.Equal(again, payload) {
				t.Fatalf("round trip: %q, %v; want %q", again, err, payload)
			}
			var req rpcRequest
			_ = json.Unmarshal(payload, &req)
		}
	})
}
