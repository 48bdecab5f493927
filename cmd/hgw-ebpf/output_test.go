package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// -o json prints the document (indented, or one line for streams), -o
// text goes through the text printer, and anything else is refused by
// name without printing.
func TestOutputFormats(t *testing.T) {
	v := map[string][]int{"a": {1, 2}}
	text := func(w io.Writer) error { _, err := io.WriteString(w, "as text\n"); return err }
	for _, c := range []struct {
		o    output
		want string
	}{
		{output{format: "json"}, "{\n  \"a\": [\n    1,\n    2\n  ]\n}\n"},
		{output{format: "json", lines: true}, "{\"a\":[1,2]}\n"},
		{output{format: "text"}, "as text\n"},
	} {
		var b bytes.Buffer
		if err := c.o.print(&b, v, text); err != nil || b.String() != c.want {
			t.Errorf("%+v: %q, %v; want %q", c.o, b.String(), err, c.want)
		}
	}
	var b bytes.Buffer
	if err := (&output{format: "yaml"}).print(&b, v, text); err == nil || !strings.Contains(err.Error(), `"yaml"`) || b.Len() > 0 {
		t.Errorf("yaml: %v, printed %q", err, b.String())
	}
}
