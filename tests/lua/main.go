// Command lua-health runs an Argo CD resource health check the way Argo CD's application
// controller does, so the check can be tested without Argo CD:
//
//	lua-health SCRIPT.lua OBJECT.json
//
// OBJECT.json is the live object (`-` reads it from stdin). Like Argo CD (util/lua in
// argo-cd) it runs the script in gopher-lua with only the package, base and table libraries
// open, a one-second deadline, and the object as the global `obj`, converted the way Argo CD
// converts an unstructured object (integers and floats become numbers, arrays become
// sequences, objects become tables with string keys, null becomes nil). The returned table
// goes through JSON into {status, message}; a status Argo CD does not know becomes Unknown
// with Argo CD's message. The result is printed as one line of JSON.
//
// Argo CD also opens a reduced os library (os.time, os.date, ...); this runner does not, so
// a check that runs here uses nothing Argo CD lacks.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// healthStatus is Argo CD's health.HealthStatus as the Lua table fills it.
type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// validStatuses are the health codes Argo CD accepts from a Lua check.
var validStatuses = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

const invalidHealthStatus = "Lua returned an invalid health status"

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: lua-health SCRIPT.lua OBJECT.json|-")
		os.Exit(2)
	}
	result, err := run(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lua-health:", err)
		os.Exit(1)
	}
	out, err := json.Marshal(result)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lua-health:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}

func run(scriptPath, objectPath string) (*healthStatus, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	object, err := readObject(objectPath)
	if err != nil {
		return nil, err
	}

	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening Lua library %q: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(string(script)); err != nil {
		return nil, err
	}

	returned := l.Get(-1)
	if returned.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", returned.Type())
	}
	goValue, err := fromLua(returned, 0)
	if err != nil {
		return nil, err
	}
	jsonBytes, err := json.Marshal(goValue)
	if err != nil {
		return nil, err
	}
	result := &healthStatus{}
	if err := json.Unmarshal(jsonBytes, result); err != nil {
		return nil, fmt.Errorf("returned table %s: %w", jsonBytes, err)
	}
	if !validStatuses[result.Status] {
		return &healthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return result, nil
}

// readObject decodes a JSON object, keeping integers integral as an unstructured object does.
func readObject(path string) (map[string]any, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.UseNumber()
	var object map[string]any
	if err := decoder.Decode(&object); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if object == nil {
		return nil, fmt.Errorf("%s: not a JSON object", path)
	}
	converted, err := numbers(object)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return converted.(map[string]any), nil
}

// numbers replaces every json.Number with an int64, or a float64 when it is not integral.
func numbers(value any) (any, error) {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		return v.Float64()
	case []any:
		for i := range v {
			converted, err := numbers(v[i])
			if err != nil {
				return nil, err
			}
			v[i] = converted
		}
	case map[string]any:
		for key := range v {
			converted, err := numbers(v[key])
			if err != nil {
				return nil, err
			}
			v[key] = converted
		}
	}
	return value, nil
}

// toLua converts a decoded object into Lua values as Argo CD's decodeValue does.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		array := l.CreateTable(len(v), 0)
		for _, item := range v {
			array.Append(toLua(l, item))
		}
		return array
	case map[string]any:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

// fromLua converts a returned Lua value into JSON-ready Go values the way Argo CD's JSON
// encoder does: a table with a sequence part is an array, else an object with string keys.
func fromLua(value lua.LValue, depth int) (any, error) {
	if depth > 100 {
		return nil, errors.New("returned table nests too deep (a cycle?)")
	}
	switch v := value.(type) {
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		return float64(v), nil
	case lua.LString:
		return string(v), nil
	case *lua.LNilType:
		return nil, nil
	case *lua.LTable:
		if n := v.MaxN(); n > 0 {
			array := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				item, err := fromLua(v.RawGetInt(i), depth+1)
				if err != nil {
					return nil, err
				}
				array = append(array, item)
			}
			return array, nil
		}
		object := map[string]any{}
		var keyErr error
		v.ForEach(func(key, item lua.LValue) {
			if keyErr != nil {
				return
			}
			name, ok := key.(lua.LString)
			if !ok {
				keyErr = fmt.Errorf("returned table has a %s key; only string keys encode", key.Type())
				return
			}
			converted, err := fromLua(item, depth+1)
			if err != nil {
				keyErr = err
				return
			}
			object[string(name)] = converted
		})
		if keyErr != nil {
			return nil, keyErr
		}
		if len(object) == 0 {
			return []any{}, nil
		}
		return object, nil
	}
	return nil, fmt.Errorf("cannot encode a Lua %s", value.Type())
}
