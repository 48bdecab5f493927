package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Float is a float64 whose NaN (a missing value) is null in JSON.
type Float float64

// MarshalJSON writes NaN and infinities as null.
func (f Float) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON reads null as NaN.
func (f *Float) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = Float(math.NaN())
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("parse number %q: %w", b, err)
	}
	*f = Float(v)
	return nil
}

// Row is one line of the table: one figure of one datapath on one profile.
type Row struct {
	Profile  string
	Figure   Figure
	Datapath string
	Summary
	VsHost   float64 // median / host's median (host6's for an IPv6 row)
	VsRoutes float64 // median / routes' median (routes6's for an IPv6 row)
	Errors   int
}

// Values are one (profile, datapath, figure)'s sample values.
func (r *Result) Values(profile, datapath, figure string) (vals []float64, errs int) {
	for _, s := range r.Samples {
		if s.Profile == profile && s.Datapath == datapath && s.Figure == figure {
			vals = append(vals, float64(s.Value))
			if s.Error != "" {
				errs++
			}
		}
	}
	return vals, errs
}

// Rows summarizes the samples in table order: profile, figure, datapath.
func (r *Result) Rows() []Row {
	var rows []Row
	for _, profile := range r.Profiles {
		for _, f := range AllFigures {
			med := map[string]float64{}
			for _, dp := range r.Datapaths {
				v, _ := r.Values(profile, dp, f.Key)
				med[dp] = Summarize(v).Median
			}
			for _, dp := range r.Datapaths {
				v, errs := r.Values(profile, dp, f.Key)
				if len(v) == 0 {
					continue // a figure this datapath does not have (program run time)
				}
				s := Summarize(v)
				hostDP, routesDP := baselines(dp)
				host, ok := med[hostDP]
				if !ok {
					host = math.NaN()
				}
				routes, ok := med[routesDP]
				if !ok {
					routes = math.NaN()
				}
				rows = append(rows, Row{
					Profile: profile, Figure: f, Datapath: dp, Summary: s, Errors: errs,
					VsHost: Ratio(s.Median, host), VsRoutes: Ratio(s.Median, routes),
				})
			}
		}
	}
	return rows
}

// WriteTable prints the rows as an aligned text table, one block per
// profile.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	last := ""
	for _, row := range r.Rows() {
		if row.Profile != last {
			if last != "" {
				fmt.Fprintln(tw, "\t\t\t\t\t\t\t")
			}
			fmt.Fprintf(tw, "profile %s\t\t\t\t\t\t\t\n", row.Profile)
			fmt.Fprintln(tw, "figure\tdatapath\tmedian\tmin–max\tx host\tx routes\tn\t")
			last = row.Profile
		}
		n := strconv.Itoa(row.N)
		if row.Errors > 0 {
			n += fmt.Sprintf(" (%d err)", row.Errors)
		}
		fmt.Fprintf(tw, "%s [%s]\t%s\t%s\t%s–%s\t%s\t%s\t%s\t\n",
			row.Figure.Title, row.Figure.Unit, row.Datapath, num(row.Median), num(row.Min), num(row.Max),
			ratio(row.VsHost), ratio(row.VsRoutes), n)
	}
	return tw.Flush()
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func ratio(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

// WriteJSON writes the result with every sample to dir/results.json and
// returns the path.
func (r *Result) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, "results.json", r)
}

// writeJSON writes v, indented, to dir/name (making dir) and returns the
// path.
func writeJSON(dir, name string, v any) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("output dir: %w", err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// WriteNotes prints the run's notes (setup facts, skipped parts).
func (r *Result) WriteNotes(w io.Writer) {
	if len(r.Notes) == 0 {
		return
	}
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range r.Notes {
		fmt.Fprintln(w, "  "+strings.TrimSpace(n))
	}
}
