package bench

import (
	"fmt"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// whiskers are min–max error bars around medians, for plotter.YErrorBars.
type whiskers struct {
	x, med, lo, hi []float64
}

func (w whiskers) Len() int                        { return len(w.x) }
func (w whiskers) XY(i int) (float64, float64)     { return w.x[i], w.med[i] }
func (w whiskers) YError(i int) (float64, float64) { return w.med[i] - w.lo[i], w.hi[i] - w.med[i] }

// WriteCharts draws one PNG per figure into dir: datapaths along X, one
// bar per profile at the median, whiskers from min to max. It returns the
// files written.
func (r *Result) WriteCharts(dir string) ([]string, error) {
	var files []string
	for _, f := range AllFigures {
		p := plot.New()
		better := "lower is better"
		if f.HigherBetter {
			better = "higher is better"
		}
		p.Title.Text = fmt.Sprintf("%s (%s; median, min–max of %d rounds)", f.Title, better, r.Rounds)
		p.Y.Label.Text = f.Unit
		p.Y.Min = 0
		n := float64(len(r.Profiles))
		dps := r.datapathsWith(f.Key)
		if len(dps) == 0 {
			continue
		}
		const groupWidth = 0.7
		for i, profile := range r.Profiles {
			shift := -groupWidth/2 + groupWidth*(float64(i)+0.5)/n
			var vals plotter.Values
			var w whiskers
			for j, dp := range dps {
				v, _ := r.Values(profile, dp, f.Key)
				s := Summarize(v)
				if s.N == 0 {
					vals = append(vals, 0)
					continue
				}
				vals = append(vals, s.Median)
				w.x = append(w.x, float64(j)+shift)
				w.med, w.lo, w.hi = append(w.med, s.Median), append(w.lo, s.Min), append(w.hi, s.Max)
			}
			bars, err := plotter.NewBarChart(vals, vg.Points(70/n))
			if err != nil {
				return files, fmt.Errorf("chart %s: %w", f.Key, err)
			}
			bars.XMin = shift
			bars.Color = plotutil.Color(i)
			bars.LineStyle.Width = 0
			p.Add(bars)
			p.Legend.Add("profile "+profile, bars)
			if w.Len() > 0 {
				eb, err := plotter.NewYErrorBars(w)
				if err != nil {
					return files, fmt.Errorf("chart %s: %w", f.Key, err)
				}
				p.Add(eb)
			}
		}
		p.Legend.Top = true
		p.NominalX(dps...)
		// Room for the outer bars of the first and last group.
		p.X.Min, p.X.Max = -0.5, float64(len(dps))-0.5
		p.Y.Max = math.Max(p.Y.Max*1.3, p.Y.Max) // room for the legend
		path := filepath.Join(dir, f.Key+".png")
		if err := p.Save(7*vg.Inch, 4*vg.Inch, path); err != nil {
			return files, fmt.Errorf("save chart %s: %w", path, err)
		}
		files = append(files, path)
	}
	return files, nil
}

// datapathsWith are the datapaths with samples of figure, in table order.
func (r *Result) datapathsWith(figure string) []string {
	var out []string
	for _, dp := range r.Datapaths {
		for _, s := range r.Samples {
			if s.Datapath == dp && s.Figure == figure {
				out = append(out, dp)
				break
			}
		}
	}
	return out
}
