package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// ProgRun is what the kernel counts for one program while BPF run-time
// statistics are on: total run time and runs.
type ProgRun struct {
	Runtime time.Duration
	Runs    uint64
}

// NsPerRun is the mean run time between two snapshots, in ns; NaN-free:
// ok is false when the program did not run in between.
func NsPerRun(before, after ProgRun) (ns float64, ok bool) {
	if after.Runs <= before.Runs || after.Runtime < before.Runtime {
		return 0, false
	}
	return float64(after.Runtime-before.Runtime) / float64(after.Runs-before.Runs), true
}

// enableProgStats turns the kernel's BPF run-time statistics on until the
// returned closer is closed (BPF_ENABLE_STATS: no sysctl is written, and
// closing the descriptor, or this process ending, turns them off again).
func enableProgStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	return c, nil
}

// progRuns sums, per program name, the run statistics of the hgw programs
// attached in the path's nodes. A program attached to several devices of a
// node (from_pods on cni0 and on the pods' veths) is one program, counted
// once.
func progRuns(p path) (map[datapath.Program]ProgRun, error) {
	out := map[datapath.Program]ProgRun{}
	for _, name := range p.Nodes {
		n, ok := p.St.Node(name)
		if !ok {
			return nil, fmt.Errorf("no node %s in lab %s", name, p.St.Prefix)
		}
		var atts []datapath.Attachment
		if err := p.St.Do(n.Name, func() (err error) {
			atts, err = datapath.Attachments(n.PinRoot)
			return err
		}); err != nil {
			return nil, fmt.Errorf("attachments of %s: %w", n.Name, err)
		}
		seen := map[uint32]bool{}
		for _, a := range atts {
			if a.ProgramID == 0 || seen[a.ProgramID] {
				continue
			}
			seen[a.ProgramID] = true
			r, err := progRun(ebpf.ProgramID(a.ProgramID))
			if err != nil {
				return nil, fmt.Errorf("%s on %s in %s: %w", a.Program, a.Dev, n.Name, err)
			}
			sum := out[a.Program]
			sum.Runtime += r.Runtime
			sum.Runs += r.Runs
			out[a.Program] = sum
		}
	}
	return out, nil
}

func progRun(id ebpf.ProgramID) (ProgRun, error) {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ProgRun{}, fmt.Errorf("open program %d: %w", id, err)
	}
	defer prog.Close()
	st, err := prog.Stats()
	if err != nil {
		return ProgRun{}, fmt.Errorf("stats of program %d: %w", id, err)
	}
	return ProgRun{Runtime: st.Runtime, Runs: st.RunCount}, nil
}

// progTimes are the per-run times of from_pods and from_underlay between
// two snapshots, for the figures FigFromPodsNs and FigFromUnderlayNs.
func progTimes(before, after map[datapath.Program]ProgRun) (fromPods, fromUnderlay float64, err error) {
	var errs []error
	get := func(p datapath.Program) float64 {
		ns, ok := NsPerRun(before[p], after[p])
		if !ok {
			errs = append(errs, fmt.Errorf("%s did not run during the load", p))
		}
		return ns
	}
	fromPods, fromUnderlay = get(datapath.FromPods), get(datapath.FromUnderlay)
	return fromPods, fromUnderlay, errors.Join(errs...)
}

// hasPrograms tells whether a datapath runs our programs.
func hasPrograms(dp string) bool {
	dp, _ = family(dp)
	return dp == DatapathEBPF || dp == DatapathEBPFNoCT
}

// progSampler measures our programs' run time over one fixed load. The
// statistics are on only meanwhile: they cost two clock reads per run,
// which the ebpf datapaths' CPU-per-packet figure of the same load then
// includes (tens of ns against thousands per packet).
type progSampler struct {
	p      path
	stats  io.Closer
	before map[datapath.Program]ProgRun
	err    error
}

func startProgSampler(p path) *progSampler {
	s := &progSampler{p: p}
	if s.stats, s.err = enableProgStats(); s.err != nil {
		return s
	}
	s.before, s.err = progRuns(p)
	return s
}

func (s *progSampler) stop() (fromPods, fromUnderlay float64, err error) {
	if s.stats != nil {
		defer s.stats.Close()
	}
	if s.err != nil {
		return math.NaN(), math.NaN(), s.err
	}
	after, err := progRuns(s.p)
	if err != nil {
		return math.NaN(), math.NaN(), err
	}
	return progTimes(s.before, after)
}
