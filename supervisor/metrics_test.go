package supervisor

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestBuildLabels(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/tether-dev/tether", Version: "v1.4.0"},
		Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "d744e54abc"}, {Key: "vcs.modified", Value: "false"}}}
	dirty := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "d744e54abc"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		name                 string
		bi                   *debug.BuildInfo
		ok                   bool
		version, goV, revish string
	}{
		{"release build", stamped, true, "v1.4.0", "go1.26.8", "d744e54abc"},
		{"modified tree", dirty, true, "(devel)", "go1.26.8", "d744e54abc-dirty"},
		{"go test binary: no version, no stamp", &debug.BuildInfo{GoVersion: "go1.26.8"}, true, "(devel)", "go1.26.8", "unknown"},
		{"modified but unstamped", &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}}, true, "(devel)", runtime.Version(), "unknown"},
		{"no build info", nil, false, "(devel)", runtime.Version(), "unknown"},
	} {
		v, g, r := buildLabels(tc.bi, tc.ok)
		if v != tc.version || g != tc.goV || r != tc.revish {
			t.Errorf("%s: (%q, %q, %q), want (%q, %q, %q)", tc.name, v, g, r, tc.version, tc.goV, tc.revish)
		}
	}
}

func TestBuildInfoMetric(t *testing.T) {
	m := NewMetrics()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "tether_build_info" {
			continue
		}
		if len(f.GetMetric()) != 1 {
			t.Fatalf("tether_build_info has %d series, want 1", len(f.GetMetric()))
		}
		s := f.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		v, g, r := buildLabels(debug.ReadBuildInfo())
		if s.GetGauge().GetValue() != 1 || labels["version"] != v || labels["go_version"] != g || labels["revision"] != r || g == "" {
			t.Fatalf("tether_build_info %v = %v, want {version=%q go_version=%q revision=%q} 1", labels, s.GetGauge().GetValue(), v, g, r)
		}
		if labels["go_version"] != runtime.Version() {
			t.Errorf("go_version %q is not this binary's %s", labels["go_version"], runtime.Version())
		}
		return
	}
	t.Fatal("no tether_build_info on the registry")
}
