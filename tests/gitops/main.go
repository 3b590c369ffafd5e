// Command gitops-health computes the health GitOps tools would show for Kubernetes objects:
// kstatus (sigs.k8s.io/cli-utils, what Flux and kpt use) and an Argo CD health check in Lua,
// run by gopher-lua, the interpreter Argo CD embeds, with the object as the global `obj`.
//
// It reads a JSON list of objects on stdin and writes one JSON line per object:
// {"name", "kstatus", "kstatusMessage", "argocd", "argocdMessage"}.
//
// Usage: gitops-health <health.lua>
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type health struct {
	Name           string `json:"name"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argocd         string `json:"argocd"`
	ArgocdMessage  string `json:"argocdMessage"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health <health.lua> < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	var objects []json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fail(fmt.Errorf("reading the objects: %w", err))
	}
	out := json.NewEncoder(os.Stdout)
	for _, raw := range objects {
		// As client-go decodes objects: integers as int64, which kstatus expects.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fail(fmt.Errorf("decoding an object: %w", err))
		}
		object := u.Object
		result, err := status.Compute(u)
		if err != nil {
			fail(fmt.Errorf("kstatus of %s: %w", u.GetName(), err))
		}
		argo, message, err := argocd(string(script), object)
		if err != nil {
			fail(fmt.Errorf("the Lua health check of %s: %w", u.GetName(), err))
		}
		h := health{u.GetName(), result.Status.String(), result.Message, argo, message}
		if err := out.Encode(h); err != nil {
			fail(err)
		}
	}
}

// argocd runs a health script as Argo CD does: `obj` set, a table {status, message} returned.
func argocd(script string, object map[string]interface{}) (string, string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	// The libraries Argo CD opens for health scripts.
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		state.Push(state.NewFunction(lib.open))
		state.Push(lua.LString(lib.name))
		state.Call(1, 0)
	}
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(script); err != nil {
		return "", "", err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	return returned.RawGetString("status").String(), returned.RawGetString("message").String(), nil
}

func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []interface{}:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
