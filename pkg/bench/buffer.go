package bench

import (
	"bytes"
	"sync"
)

// limitedBuffer keeps the first 64 KiB a helper writes: enough for an
// error message, bounded for a chatty server. Safe for the exec package's
// copying goroutines.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const outputLimit = 64 << 10

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := outputLimit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
