package testutil

import (
	"net"
	"testing"
)

// FreeLoopbackAddr is a 127.0.0.1 host:port that was free a moment ago,
// for a server the test starts (which may still lose it to a race: retry).
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free loopback port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}
