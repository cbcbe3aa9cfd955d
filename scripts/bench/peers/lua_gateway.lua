-- lua_gateway.lua: the bench's feature-matched peer (scripts/bench.sh target lua-gateway): what
-- a platform team would write in nginx + lua instead of capgate, for one signature app. Written
-- for the bench, from the v2 rules capgate implements (common/sign.c, common/validate.c):
--   1. validation: Action one of the three captcha Actions, SecretId, Timestamp, Nonce and
--      Signature present, Timestamp and Nonce unsigned integers, every parameter once, and the
--      Action's required parameters (CaptchaIframeQuery: captchaType, disturbLevel, isHttps 0|1,
--      clientType 1..4, accountType);                                        -> 4000
--   2. the app's SecretId is known;                                          -> 4100
--   3. Timestamp within the window, Nonce not seen (shared dict);            -> 4500
--   4. the signature: base64(HMAC-SHA1 or -SHA256(app key, METHOD + Host + path + '?' + the
--      parameters but Signature sorted by name, name=value joined with '&', values decoded,
--      '_' past a name's first byte written '.', with POST the '@' values left out));  -> 4100
--   5. the Nonce recorded (add: atomic across workers; a copy that raced in loses);  -> 4500
--   6. a counter per businessId:sceneId and second (shared dict incr);       -> 4400
--   7. re-signed with the upstream credential (new SecretId, Timestamp, Nonce, Region,
--      SignatureMethod), forwarded as GET to the mock by proxy_pass; nginx writes the access log.
-- HMAC is OpenSSL's (the nginx binary links libcrypto) through LuaJIT's FFI.
local ffi = require("ffi")
local C = ffi.C

ffi.cdef([[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha1(void);
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *md, unsigned int *md_len);
]])

local M = {}
local cfg
local md_buf = ffi.new("unsigned char[64]")
local md_len = ffi.new("unsigned int[1]")
local nonce_next = 0

local ACTIONS = {
  CaptchaIframeQuery = { "captchaType", "disturbLevel", "isHttps", "clientType", "accountType" },
  CaptchaCheck = { "captchaType", "ticket", "userIp", "randstr" },
  CaptchaQuery = { "registerTime", "userIp", "captchaType", "script", "businessId" },
}
local UINT_NAMES = {
  captchaType = true, disturbLevel = true, isHttps = true, clientType = true,
  accountType = true, businessId = true, sceneId = true, registerTime = true,
}
local PUBLIC = {
  Signature = true, SecretId = true, Timestamp = true, Nonce = true, Region = true,
  SignatureMethod = true, Action = true,
}
local DESC = { [4000] = "InvalidParameter", [4100] = "AuthFailure", [4400] = "LimitExceeded",
  [4500] = "ReplayAttack" }

-- conf: app_id, app_key, upstream_id, upstream_key, upstream_host (host:port), upstream_path,
-- upstream_method ("HmacSHA256" or "HmacSHA1"), region, window_s, limit (per key and second).
function M.init(conf)
  cfg = conf
end

function M.init_worker()
  -- Upstream Nonces: one run per worker, far apart, so no two requests share one.
  nonce_next = (ngx.worker.pid() % 65536) * 4294967296 + math.floor(ngx.now() * 1000) % 4294967296
end

local function hmac_b64(method, key, data)
  local md = method == "HmacSHA256" and C.EVP_sha256() or C.EVP_sha1()
  if C.HMAC(md, key, #key, data, #data, md_buf, md_len) == nil then
    return nil
  end
  return ngx.encode_base64(ffi.string(md_buf, md_len[0]))
end

local function string_to_sign(method, host, path, args, skip_at)
  local names = {}
  for k, v in pairs(args) do
    if k ~= "Signature" and not (skip_at and v:sub(1, 1) == "@") then
      names[#names + 1] = k
    end
  end
  table.sort(names)
  local parts = {}
  for i, k in ipairs(names) do
    local rest = k:sub(2):gsub("_", ".")
    parts[i] = k:sub(1, 1) .. rest .. "=" .. args[k]
  end
  return method .. host .. path .. "?" .. table.concat(parts, "&")
end

local function reply(code, message)
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.say(string.format('{"code":%d,"codeDesc":"%s","message":"%s"}', code, DESC[code], message))
  return ngx.exit(200)
end

-- The access phase: checks, then sets $upstream_args for proxy_pass.
function M.access()
  local method = ngx.req.get_method()
  local args, err
  if method == "POST" then
    ngx.req.read_body()
    args, err = ngx.req.get_post_args(100)
  else
    args, err = ngx.req.get_uri_args(100)
  end
  if err == "truncated" then
    return reply(4000, "more than 100 parameters")
  end
  for k, v in pairs(args) do
    if type(v) == "table" then
      return reply(4000, "parameter " .. k .. " given more than once")
    elseif v == true then
      args[k] = ""
    end
  end
  local action = args.Action
  local required = action and ACTIONS[action]
  if not required then
    return reply(4000, "Action must be one of CaptchaIframeQuery, CaptchaCheck, CaptchaQuery")
  end
  for _, k in ipairs({ "SecretId", "Signature" }) do
    if not args[k] or args[k] == "" then
      return reply(4000, "missing required parameter " .. k)
    end
  end
  for _, k in ipairs({ "Timestamp", "Nonce" }) do
    if not args[k] or not args[k]:match("^%d+$") or #args[k] > 19 then
      return reply(4000, k .. " must be an unsigned integer")
    end
  end
  for _, k in ipairs(required) do
    if not args[k] or args[k] == "" then
      return reply(4000, "missing required parameter " .. k)
    end
  end
  for k in pairs(UINT_NAMES) do
    local v = args[k]
    if v and (not v:match("^%d+$") or #v > 10 or tonumber(v) > 4294967295) then
      return reply(4000, k .. " must be an unsigned integer")
    end
  end
  if action == "CaptchaIframeQuery" then
    if args.isHttps ~= "0" and args.isHttps ~= "1" then
      return reply(4000, "isHttps must be one of 0, 1")
    end
    local ct = tonumber(args.clientType)
    if ct < 1 or ct > 4 then
      return reply(4000, "clientType must be one of 1, 2, 3, 4")
    end
  end

  if args.SecretId ~= cfg.app_id then
    return reply(4100, "SecretId is not known at this gateway")
  end
  local now = ngx.time()
  if math.abs(tonumber(args.Timestamp) - now) > cfg.window_s then
    return reply(4500, "Timestamp is outside the allowed window")
  end
  local nonces = ngx.shared.nonces
  local nonce_key = args.SecretId .. ":" .. args.Nonce
  if nonces:get(nonce_key) then
    return reply(4500, "Nonce " .. args.Nonce .. " was already used by this SecretId")
  end
  local text = string_to_sign(method, ngx.var.http_host or "", ngx.var.uri, args, method == "POST")
  local want = hmac_b64(args.SignatureMethod, cfg.app_key, text)
  if not want or want ~= args.Signature then
    return reply(4100, "the Signature does not match the request")
  end
  local ok, aerr = nonces:add(nonce_key, true, 2 * cfg.window_s)
  if not ok then
    if aerr == "exists" then
      return reply(4500, "Nonce " .. args.Nonce .. " was already used by this SecretId")
    end
    return ngx.exit(500)
  end

  local biz, scene = args.businessId or "", args.sceneId or ""
  ngx.var.biz_id = biz
  ngx.var.scene_id = scene
  local n = ngx.shared.counters:incr(biz .. ":" .. scene .. ":" .. now, 1, 0, 2)
  if not n or n > cfg.limit then
    return reply(4400, "request quota exceeded for businessId:sceneId " .. biz .. ":" .. scene)
  end

  local up = {}
  for k, v in pairs(args) do
    if not PUBLIC[k] then
      up[k] = v
    end
  end
  up.Action = action
  up.SecretId = cfg.upstream_id
  up.Timestamp = tostring(now)
  nonce_next = nonce_next + 1
  up.Nonce = string.format("%d", nonce_next)
  up.Region = cfg.region
  up.SignatureMethod = cfg.upstream_method
  up.Signature = hmac_b64(cfg.upstream_method, cfg.upstream_key,
    string_to_sign("GET", cfg.upstream_host, cfg.upstream_path, up, false))
  ngx.var.upstream_args = ngx.encode_args(up)
end

return M
