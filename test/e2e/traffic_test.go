package e2e

// TCP traffic the way users see it: HTTP requests, each on its own
// connection, and iperf3 transfers, between any two lab namespaces.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/logtail"
)

// serveHTTP serves HTTP on port inside a lab namespace until the test
// ends. Each answer is "<namespace> <client address>": the client learns
// who answered and whom the server saw (masqueraded or not).
func serveHTTP(t *testing.T, st lab.State, ns string, port int) {
	t.Helper()
	var ln net.Listener
	err := st.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("HTTP server in %s: %v", ns, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "%s %s", ns, host)
		}),
		ReadHeaderTimeout: 2 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// httpGets makes n GET requests from a lab namespace, each on a new TCP
// connection (a new conntrack entry each) and bounded to 2 s. It returns
// the answers and the errors; after three errors it stops trying.
func httpGets(st lab.State, from, url string, n int) (answers []string, errs []error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := st.Do(from, func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	for i := 0; i < n && len(errs) < 3; i++ {
		resp, err := client.Get(url)
		if err != nil {
			errs = append(errs, fmt.Errorf("request %d: %w", i, err))
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("request %d: status %d, %v", i, resp.StatusCode, err))
			continue
		}
		answers = append(answers, string(b))
	}
	return answers, errs
}

// httpRequests is how many requests each HTTP check makes.
const httpRequests = 10

// expectHTTP expects every one of httpRequests requests from a lab
// namespace to url to be answered by server; it returns the client address
// the server saw (the same every time, or the test fails).
func expectHTTP(t *testing.T, st lab.State, from, url, server string) (seen string) {
	t.Helper()
	answers, errs := httpGets(st, from, url, httpRequests)
	if len(errs) > 0 {
		t.Errorf("%s -> %s: %d of %d HTTP requests answered; first error: %v", from, url, len(answers), httpRequests, errs[0])
		return ""
	}
	for _, a := range answers {
		got, client, _ := strings.Cut(a, " ")
		if got != server {
			t.Errorf("%s -> %s: answered by %q, want %s", from, url, got, server)
		}
		if seen != "" && client != seen {
			t.Errorf("%s -> %s: the server saw the client as %s and as %s", from, url, seen, client)
		}
		seen = client
	}
	return seen
}

// iperfResult is what the tests read of iperf3's JSON report.
type iperfResult struct {
	Intervals []struct {
		Sum struct {
			Bytes uint64 `json:"bytes"`
		} `json:"sum"`
	} `json:"intervals"`
	End struct {
		SumReceived struct {
			Bytes uint64 `json:"bytes"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// startIperf starts a one-off iperf3 server in a lab namespace on
// serverPort and, once it listens, a client in another sending to
// addr:port for secs seconds (0.5 s intervals). wait returns the client's
// report, or why it has none. Both processes end by the test's end.
func startIperf(t *testing.T, st lab.State, server string, serverPort int, from, addr string, port, secs int) (wait func() (iperfResult, error)) {
	t.Helper()
	srv := exec.Command("iperf3", "-s", "-1", "-p", strconv.Itoa(serverPort))
	if err := st.Start(server, srv); err != nil {
		t.Fatal(err)
	}
	srvDone := make(chan struct{})
	go func() { srv.Wait(); close(srvDone) }()
	t.Cleanup(func() { srv.Process.Signal(syscall.SIGKILL); <-srvDone })
	if _, ok := waitFor(context.Background(), 5*time.Second, func() bool { return listening(st, server, serverPort) }); !ok {
		t.Fatalf("iperf3 server in %s is not listening on %d", server, serverPort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+20)*time.Second)
	var out bytes.Buffer
	cli := exec.CommandContext(ctx, "iperf3", "-c", addr, "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(secs), "-i", "0.5", "--connect-timeout", "2000", "-J")
	cli.Stdout, cli.Stderr = &out, &out
	if err := st.Start(from, cli); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return func() (iperfResult, error) {
		werr := cli.Wait()
		cancel()
		var res iperfResult
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return res, fmt.Errorf("iperf3 %s -> %s:%d: %v, report not JSON: %v\n%s", from, addr, port, werr, err, logtail.Lines(out.String(), 10))
		}
		if res.Error != "" || werr != nil {
			return res, fmt.Errorf("iperf3 %s -> %s:%d: %v: %s", from, addr, port, werr, res.Error)
		}
		return res, nil
	}
}

// listening reports whether a TCP socket listens on port in a namespace.
func listening(st lab.State, ns string, port int) bool {
	out, err := st.Output(context.Background(), ns, "ss", "-Htln", fmt.Sprintf("sport = :%d", port))
	return err == nil && strings.TrimSpace(out) != ""
}

// stalls lists the intervals of a transfer that moved no byte.
func (r iperfResult) stalls() []int {
	var out []int
	for i, iv := range r.Intervals {
		if iv.Sum.Bytes == 0 {
			out = append(out, i)
		}
	}
	return out
}

// expectIperf runs a 3-second iperf3 transfer and expects it to finish,
// with data in every half second.
func expectIperf(t *testing.T, st lab.State, server string, serverPort int, from, addr string, port int) {
	t.Helper()
	res, err := startIperf(t, st, server, serverPort, from, addr, port, 3)()
	if err != nil {
		t.Error(err)
		return
	}
	if s := res.stalls(); len(s) > 0 || res.End.SumReceived.Bytes == 0 {
		t.Errorf("iperf3 %s -> %s:%d: %d bytes received, stalled in intervals %v", from, addr, port, res.End.SumReceived.Bytes, s)
	}
}
