package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPUTimes are the machine-wide jiffies of /proc/stat's "cpu" line. The
// file is the same in every network namespace: it counts the work of every
// CPU, including the softirq time the datapath spends.
type CPUTimes struct {
	Kernel uint64 // system+irq+softirq: where a datapath spends its time
	Busy   uint64 // Kernel + user+nice+steal
	All    uint64 // Busy + idle + iowait
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat.
func ParseProcStat(text string) (CPUTimes, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("parse /proc/stat field %d: %w", i+1, err)
			}
			v[i] = n
		}
		// user nice system idle iowait irq softirq steal
		kernel := v[2] + v[5] + v[6]
		busy := kernel + v[0] + v[1] + v[7]
		return CPUTimes{Kernel: kernel, Busy: busy, All: busy + v[3] + v[4]}, nil
	}
	return CPUTimes{}, fmt.Errorf("no cpu line in /proc/stat")
}

func readCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	return ParseProcStat(string(b))
}

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI).
const userHZ = 100

// PerPacket is the CPU time between two snapshots per delivered packet,
// in ns: kernel time (system, irq, softirq) and all busy time.
//
// The figure is kernel time: the datapath's work (sendmmsg down to the
// veth, softirq forwarding and delivery) is all kernel time, while other
// work on a shared machine (compilers, tests) is mostly user time and
// would otherwise swamp it. Busy time is kept in the samples too.
func PerPacket(before, after CPUTimes, packets int64) (kernelNs, busyNs float64, err error) {
	if packets <= 0 {
		return 0, 0, fmt.Errorf("no packet delivered")
	}
	if after.Busy < before.Busy || after.Kernel < before.Kernel {
		return 0, 0, fmt.Errorf("/proc/stat went backwards")
	}
	perPkt := func(j uint64) float64 { return float64(j) * 1e9 / userHZ / float64(packets) }
	return perPkt(after.Kernel - before.Kernel), perPkt(after.Busy - before.Busy), nil
}
