package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"
)

func TestMutualTLS(t *testing.T) {
	cluster := newTestCA(t, "cluster CA")
	other := newTestCA(t, "other CA")
	tests := []struct {
		name           string
		server, client Auth
		wantErr        error // nil: the call succeeds
	}{
		{
			name:   "both from the cluster CA",
			server: Auth{TLS: nodeTLS(t, cluster, cluster, "a")},
			client: Auth{TLS: nodeTLS(t, cluster, cluster, "b")},
		},
		{
			name:   "tls and the same secret",
			server: Auth{TLS: nodeTLS(t, cluster, cluster, "a"), Secret: "s3cret"},
			client: Auth{TLS: nodeTLS(t, cluster, cluster, "b"), Secret: "s3cret"},
		},
		{
			name:    "tls and a different secret",
			server:  Auth{TLS: nodeTLS(t, cluster, cluster, "a"), Secret: "s3cret"},
			client:  Auth{TLS: nodeTLS(t, cluster, cluster, "b"), Secret: "other"},
			wantErr: ErrAuth,
		},
		{
			name:    "client certificate from another CA",
			server:  Auth{TLS: nodeTLS(t, cluster, cluster, "a")},
			client:  Auth{TLS: nodeTLS(t, other, cluster, "intruder")},
			wantErr: ErrAuth,
		},
		{
			name:    "server certificate from another CA",
			server:  Auth{TLS: nodeTLS(t, other, cluster, "impostor")},
			client:  Auth{TLS: nodeTLS(t, cluster, cluster, "b")},
			wantErr: ErrAuth,
		},
		{
			name:    "client without TLS",
			server:  Auth{TLS: nodeTLS(t, cluster, cluster, "a")},
			client:  Auth{Secret: "s3cret"},
			wantErr: ErrUnavailable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoGoroutineLeak(t)
			server := listenNode(t, tt.server, 2*time.Second)
			client := listenNode(t, tt.client, 2*time.Second)
			server.Handle("echo", echo)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var got echoReply
			err := client.Call(ctx, server.Addr(), "echo", "x", &got)
			if tt.wantErr == nil {
				if err != nil || got.From != client.Addr() {
					t.Fatalf("Call: %v, from %q", err, got.From)
				}
				// The pooled TLS connection is reused.
				if err := client.Call(ctx, server.Addr(), "echo", "y", nil); err != nil {
					t.Fatalf("second Call: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Call: %v, want %v", err, tt.wantErr)
			}
			t.Log(err)
			checkLogsFree(t, server.logs, "s3cret", "other")
		})
	}

	// A TLS client without a certificate gets no further than TLS.
	t.Run("client without certificate", func(t *testing.T) {
		server := listenNode(t, Auth{TLS: nodeTLS(t, cluster, cluster, "a")}, 2*time.Second)
		conn := rawDial(t, server.Addr())
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		tc := tls.Client(conn, &tls.Config{RootCAs: cluster.pool, InsecureSkipVerify: true})
		err := tc.Handshake()
		if err == nil {
			// TLS 1.3: the server's verdict on our (missing) certificate
			// arrives with the first read.
			err = clientHandshake(tc, nil, purposeRPC, "127.0.0.1:1", nil)
		}
		if err == nil {
			t.Fatal("a client without a certificate got through")
		}
		t.Log(err)
	})
}
