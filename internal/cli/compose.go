package cli

import (
	"fmt"
	"os"
	"slices"

	"gopkg.in/yaml.v3"
)

// ComposeFile is the part of docker-compose.yml the tests check.
type ComposeFile struct {
	Services map[string]ComposeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// ComposeService is one service of a compose file.
type ComposeService struct {
	Image       string       `yaml:"image"`
	Build       any          `yaml:"build"`
	Command     []string     `yaml:"command"`
	Ports       []string     `yaml:"ports"`
	Volumes     []string     `yaml:"volumes"`
	DependsOn   DependsOn    `yaml:"depends_on"`
	Restart     string       `yaml:"restart"` // "" is compose's default, no
	Healthcheck *Healthcheck `yaml:"healthcheck"`
}

// Healthcheck is a service's healthcheck.
type Healthcheck struct {
	// Test is the exec form: ["CMD", program, args...].
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

// Conditions of a depends_on entry.
const (
	// ConditionStarted waits until the service has started; compose's
	// default, and what the list form means.
	ConditionStarted = "service_started"
	// ConditionHealthy waits until the service's healthcheck passes.
	ConditionHealthy = "service_healthy"
	// ConditionCompleted waits until a one-shot service exited 0.
	ConditionCompleted = "service_completed_successfully"
)

// DependsOn is a service's depends_on in either compose form — a list of
// service names, or a map of service name to its condition — as service
// name to condition (ConditionStarted where none is given).
type DependsOn map[string]string

// Names returns the services depended on, sorted.
func (d DependsOn) Names() []string {
	names := make([]string, 0, len(d))
	for k := range d {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// UnmarshalYAML accepts both forms.
func (d *DependsOn) UnmarshalYAML(n *yaml.Node) error {
	out := DependsOn{}
	switch n.Kind {
	case yaml.SequenceNode:
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		for _, name := range names {
			out[name] = ConditionStarted
		}
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		for name, dep := range m {
			switch dep.Condition {
			case "":
				dep.Condition = ConditionStarted
			case ConditionStarted, ConditionHealthy, ConditionCompleted:
			default:
				return fmt.Errorf("depends_on %s at line %d: condition %q: want %s, %s or %s",
					name, n.Line, dep.Condition, ConditionStarted, ConditionHealthy, ConditionCompleted)
			}
			out[name] = dep.Condition
		}
	default:
		return fmt.Errorf("depends_on at line %d: want a list or a map of services", n.Line)
	}
	*d = out
	return nil
}

// ReadCompose parses a compose file strictly enough to catch typos in the
// keys the tests rely on.
func ReadCompose(path string) (ComposeFile, error) {
	var c ComposeFile
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("cli: %s: %w", path, err)
	}
	return c, nil
}

// CommandsOf returns the arguments (after the binary) of every service
// whose command runs /usr/local/bin/<binary>, keyed by service name.
func (c ComposeFile) CommandsOf(binary string) map[string][]string {
	out := map[string][]string{}
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "/usr/local/bin/"+binary {
			out[name] = s.Command[1:]
		}
	}
	return out
}
