/*
 * QR Code encoder for the kiosk: byte mode, error correction level M, versions 1-40.
 *
 * Follows ISO/IEC 18004:2015. The payment QR (a QRIS string of about 150-250 characters,
 * version 8-10 at level M) is drawn locally on a <canvas>, so the page never fetches an image.
 *
 *   QR.encode(text [, {mask, minVersion}]) -> {version, mask, size, modules}
 *       modules[row][col] is 1 (dark) or 0 (light), without the quiet zone.
 *   QR.draw(canvas, code [, {quiet, cssSize, dark, light}])
 *       paints the code with a quiet zone on whole device pixels per module.
 *
 * Mask choice: the lowest penalty of 7.8.3.1 (N1..N4), scored before the format and version
 * information is written (7.8), the first mask wins a tie.
 * Works in a browser (window.QR) and in Node (module.exports), which the tests use.
 */
(function (root) {
  "use strict";

  // Table 9, level M: [error correction codewords per block, blocks in group 1,
  // data codewords per block in group 1, blocks in group 2 (one more data codeword each)].
  var EC_M = [
    null,
    [10, 1, 16, 0], [16, 1, 28, 0], [26, 1, 44, 0], [18, 2, 32, 0], [24, 2, 43, 0],
    [16, 4, 27, 0], [18, 4, 31, 0], [22, 2, 38, 2], [22, 3, 36, 2], [26, 4, 43, 1],
    [30, 1, 50, 4], [22, 6, 36, 2], [22, 8, 37, 1], [24, 4, 40, 5], [24, 5, 41, 5],
    [28, 7, 45, 3], [28, 10, 46, 1], [26, 9, 43, 4], [26, 3, 44, 11], [26, 3, 41, 13],
    [26, 17, 42, 0], [28, 17, 46, 0], [28, 4, 47, 14], [28, 6, 45, 14], [28, 8, 47, 13],
    [28, 19, 46, 4], [28, 22, 45, 3], [28, 3, 45, 23], [28, 21, 45, 7], [28, 19, 47, 10],
    [28, 2, 46, 29], [28, 10, 46, 23], [28, 14, 46, 21], [28, 14, 46, 23], [28, 12, 47, 26],
    [28, 6, 47, 34], [28, 29, 46, 14], [28, 13, 46, 32], [28, 40, 47, 7], [28, 18, 47, 31],
  ];
  var MAX_VERSION = 40;
  var EC_LEVEL_M_BITS = 0; // 7.9.1: L=01, M=00, Q=11, H=10

  // --- Galois field GF(2^8), primitive polynomial x^8+x^4+x^3+x^2+1 (0x11D) ----------------
  var EXP = new Array(512);
  var LOG = new Array(256);
  (function () {
    var x = 1;
    for (var i = 0; i < 255; i++) {
      EXP[i] = x;
      LOG[x] = i;
      x <<= 1;
      if (x & 0x100) x ^= 0x11d;
    }
    for (var j = 255; j < 512; j++) EXP[j] = EXP[j - 255];
  })();

  function gfMul(a, b) {
    return a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]];
  }

  // Generator polynomial of degree n, highest coefficient first (leading 1 omitted).
  var generators = {};
  function generator(n) {
    if (generators[n]) return generators[n];
    var poly = [1];
    for (var i = 0; i < n; i++) {
      var next = new Array(poly.length + 1).fill(0);
      for (var k = 0; k < poly.length; k++) {
        next[k] ^= poly[k];
        next[k + 1] ^= gfMul(poly[k], EXP[i]);
      }
      poly = next;
    }
    generators[n] = poly.slice(1);
    return generators[n];
  }

  function reedSolomon(data, ecLen) {
    var gen = generator(ecLen);
    var rem = new Array(ecLen).fill(0);
    for (var i = 0; i < data.length; i++) {
      var factor = data[i] ^ rem.shift();
      rem.push(0);
      for (var k = 0; k < ecLen; k++) rem[k] ^= gfMul(gen[k], factor);
    }
    return rem;
  }

  // --- Symbol geometry -------------------------------------------------------------------
  function sizeOf(version) {
    return version * 4 + 17;
  }

  // Annex E: alignment pattern centre coordinates.
  function alignmentPositions(version) {
    if (version === 1) return [];
    var count = Math.floor(version / 7) + 2;
    var step = version === 32 ? 26 : Math.ceil((version * 4 + 4) / (count * 2 - 2)) * 2;
    var result = [6];
    for (var pos = sizeOf(version) - 7; result.length < count; pos -= step) result.splice(1, 0, pos);
    return result;
  }

  function dataCapacity(version) {
    var ec = EC_M[version];
    return ec[1] * ec[2] + ec[3] * (ec[2] + 1);
  }

  // --- Data encoding (7.4) -----------------------------------------------------------------
  function utf8Bytes(text) {
    if (typeof TextEncoder !== "undefined") return Array.from(new TextEncoder().encode(text));
    var bytes = [];
    var s = unescape(encodeURIComponent(text));
    for (var i = 0; i < s.length; i++) bytes.push(s.charCodeAt(i));
    return bytes;
  }

  function countBits(version) {
    return version < 10 ? 8 : 16; // Table 3, byte mode
  }

  function chooseVersion(byteCount, minVersion) {
    for (var v = Math.max(1, minVersion || 1); v <= MAX_VERSION; v++) {
      if (4 + countBits(v) + byteCount * 8 <= dataCapacity(v) * 8) return v;
    }
    throw new RangeError("QR: " + byteCount + " bytes do not fit a version " + MAX_VERSION + "-M symbol");
  }

  function dataCodewords(bytes, version) {
    var bits = [];
    function put(value, length) {
      for (var i = length - 1; i >= 0; i--) bits.push((value >>> i) & 1);
    }
    put(4, 4); // mode indicator: byte
    put(bytes.length, countBits(version));
    bytes.forEach(function (b) {
      put(b, 8);
    });
    var capacityBits = dataCapacity(version) * 8;
    put(0, Math.min(4, capacityBits - bits.length)); // terminator (7.4.9)
    put(0, (8 - (bits.length % 8)) % 8); // only up to the next codeword boundary (7.4.10)
    var words = [];
    for (var i = 0; i < bits.length; i += 8) {
      var w = 0;
      for (var k = 0; k < 8; k++) w = (w << 1) | bits[i + k];
      words.push(w);
    }
    for (var pad = 0; words.length < dataCapacity(version); pad ^= 1) words.push(pad ? 0x11 : 0xec);
    return words;
  }

  // 7.5 and 7.6: split into blocks, add error correction, interleave.
  function finalMessage(data, version) {
    var ec = EC_M[version];
    var blocks = [];
    var offset = 0;
    for (var b = 0; b < ec[1] + ec[3]; b++) {
      var len = ec[2] + (b < ec[1] ? 0 : 1);
      var block = data.slice(offset, offset + len);
      offset += len;
      blocks.push({ data: block, ec: reedSolomon(block, ec[0]) });
    }
    var out = [];
    for (var i = 0; i <= ec[2]; i++) {
      blocks.forEach(function (blk) {
        if (i < blk.data.length) out.push(blk.data[i]);
      });
    }
    for (var j = 0; j < ec[0]; j++) {
      blocks.forEach(function (blk) {
        out.push(blk.ec[j]);
      });
    }
    return out;
  }

  // --- Matrix --------------------------------------------------------------------------------
  function Matrix(version) {
    this.size = sizeOf(version);
    this.modules = [];
    this.isFunction = [];
    for (var r = 0; r < this.size; r++) {
      this.modules.push(new Array(this.size).fill(0));
      this.isFunction.push(new Array(this.size).fill(false));
    }
  }
  Matrix.prototype.setFunction = function (row, col, dark) {
    this.modules[row][col] = dark ? 1 : 0;
    this.isFunction[row][col] = true;
  };

  function drawFunctionPatterns(m, version) {
    var size = m.size;
    // Finder patterns with separators (6.3.3, 6.3.4).
    [[0, 0], [0, size - 7], [size - 7, 0]].forEach(function (corner) {
      for (var dr = -1; dr <= 7; dr++) {
        for (var dc = -1; dc <= 7; dc++) {
          var r = corner[0] + dr;
          var c = corner[1] + dc;
          if (r < 0 || c < 0 || r >= size || c >= size) continue;
          var ring = Math.max(Math.abs(dr - 3), Math.abs(dc - 3));
          m.setFunction(r, c, ring !== 2 && ring !== 4);
        }
      }
    });
    // Timing patterns (6.3.5).
    for (var i = 8; i < size - 8; i++) {
      m.setFunction(6, i, i % 2 === 0);
      m.setFunction(i, 6, i % 2 === 0);
    }
    // Alignment patterns (6.3.6), except where they would overlap a finder.
    var pos = alignmentPositions(version);
    var last = pos.length - 1;
    pos.forEach(function (r, a) {
      pos.forEach(function (c, b) {
        if ((a === 0 && b === 0) || (a === 0 && b === last) || (a === last && b === 0)) return;
        for (var dr = -2; dr <= 2; dr++) {
          for (var dc = -2; dc <= 2; dc++) {
            m.setFunction(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
          }
        }
      });
    });
    // Reserve format information (7.9) and, from version 7, version information (7.10);
    // they stay light while the masks are scored and are written afterwards.
    for (var k = 0; k < 9; k++) {
      if (k === 6) continue; // the timing patterns cross here
      m.setFunction(8, k, false);
      m.setFunction(k, 8, false);
    }
    for (var q = 0; q < 8; q++) {
      m.setFunction(8, size - 1 - q, false);
      m.setFunction(size - 1 - q, 8, false);
    }
    if (version >= 7) {
      for (var a = 0; a < 6; a++) {
        for (var b = 0; b < 3; b++) {
          m.setFunction(a, size - 11 + b, false);
          m.setFunction(size - 11 + b, a, false);
        }
      }
    }
  }

  // 7.7.3: two-module wide columns, alternately upwards and downwards, right to left.
  function placeCodewords(m, codewords) {
    var size = m.size;
    var bit = 0;
    var total = codewords.length * 8;
    for (var right = size - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5; // skip the vertical timing pattern
      var upwards = ((right + 1) & 2) === 0;
      for (var v = 0; v < size; v++) {
        var row = upwards ? size - 1 - v : v;
        for (var z = 0; z < 2; z++) {
          var col = right - z;
          if (m.isFunction[row][col]) continue;
          if (bit < total) {
            m.modules[row][col] = (codewords[bit >>> 3] >>> (7 - (bit & 7))) & 1;
            bit++;
          }
        }
      }
    }
  }

  // 7.8.2, Table 10: i is the row, j the column.
  var MASKS = [
    function (i, j) { return (i + j) % 2 === 0; },
    function (i) { return i % 2 === 0; },
    function (i, j) { return j % 3 === 0; },
    function (i, j) { return (i + j) % 3 === 0; },
    function (i, j) { return (Math.floor(i / 2) + Math.floor(j / 3)) % 2 === 0; },
    function (i, j) { return ((i * j) % 2) + ((i * j) % 3) === 0; },
    function (i, j) { return (((i * j) % 2) + ((i * j) % 3)) % 2 === 0; },
    function (i, j) { return (((i + j) % 2) + ((i * j) % 3)) % 2 === 0; },
  ];

  function masked(m, mask) {
    var fn = MASKS[mask];
    return m.modules.map(function (row, i) {
      return row.map(function (dark, j) {
        return !m.isFunction[i][j] && fn(i, j) ? dark ^ 1 : dark;
      });
    });
  }

  // 7.8.3.1, Table 11.
  function finderLikeCount(line) {
    // 1:1:3:1:1 (dark light dark dark dark light dark) with 4 light modules on either side;
    // the quiet zone outside the symbol counts as light.
    var n = line.length;
    var count = 0;
    var i = 0;
    while (i <= n - 7) {
      if (
        line[i] && !line[i + 1] && line[i + 2] && line[i + 3] && line[i + 4] &&
        !line[i + 5] && line[i + 6]
      ) {
        if (lightRun(line, i - 4, i) || lightRun(line, i + 7, i + 11)) {
          count++;
          i += 7;
        } else {
          i += 4;
        }
      } else {
        i++;
      }
    }
    return count;
  }

  function lightRun(line, from, to) {
    for (var k = Math.max(from, 0); k < Math.min(to, line.length); k++) if (line[k]) return false;
    return true;
  }

  function penalty(grid) {
    var size = grid.length;
    var score = 0;
    var dark = 0;
    for (var a = 0; a < size; a++) {
      var runRow = 0;
      var runCol = 0;
      var column = new Array(size);
      for (var b = 0; b < size; b++) {
        var cell = grid[a][b];
        column[b] = grid[b][a];
        dark += cell;
        // N1: runs of five or more modules of one colour, in rows and in columns.
        if (b > 0 && cell === grid[a][b - 1]) runRow++;
        else {
          if (runRow >= 5) score += runRow - 2;
          runRow = 1;
        }
        if (b > 0 && grid[b][a] === grid[b - 1][a]) runCol++;
        else {
          if (runCol >= 5) score += runCol - 2;
          runCol = 1;
        }
        // N2: 2x2 blocks of one colour.
        if (a > 0 && b > 0 && cell === grid[a][b - 1] && cell === grid[a - 1][b] && cell === grid[a - 1][b - 1]) {
          score += 3;
        }
      }
      if (runRow >= 5) score += runRow - 2;
      if (runCol >= 5) score += runCol - 2;
      // N3: finder-like patterns.
      score += 40 * (finderLikeCount(grid[a]) + finderLikeCount(column));
    }
    // N4: 10 points per full 5% step away from half dark.
    score += 10 * Math.floor(Math.abs((dark / (size * size)) * 100 - 50) / 5);
    return score;
  }

  // 7.9: BCH(15,5) with generator 0x537, XOR 0x5412.
  function formatBits(mask) {
    var data = (EC_LEVEL_M_BITS << 3) | mask;
    var rem = data;
    for (var i = 0; i < 10; i++) rem = (rem << 1) ^ ((rem >>> 9) * 0x537);
    return ((data << 10) | rem) ^ 0x5412;
  }

  // 7.10: BCH(18,6) with generator 0x1F25.
  function versionBits(version) {
    var rem = version;
    for (var i = 0; i < 12; i++) rem = (rem << 1) ^ ((rem >>> 11) * 0x1f25);
    return (version << 12) | rem;
  }

  function drawFormatAndVersion(grid, version, mask) {
    var size = grid.length;
    var bits = formatBits(mask);
    var bit = function (i) {
      return (bits >>> i) & 1;
    };
    // Around the top left finder (bit 0 at the bottom of column 8, bit 14 at the left of row 8).
    for (var i = 0; i <= 5; i++) grid[i][8] = bit(i);
    grid[7][8] = bit(6);
    grid[8][8] = bit(7);
    grid[8][7] = bit(8);
    for (var k = 9; k < 15; k++) grid[8][14 - k] = bit(k);
    // The copy split between the top right and bottom left finders.
    for (var r = 0; r < 8; r++) grid[8][size - 1 - r] = bit(r);
    for (var s = 8; s < 15; s++) grid[size - 15 + s][8] = bit(s);
    grid[size - 8][8] = 1; // the dark module
    if (version >= 7) {
      var vb = versionBits(version);
      for (var n = 0; n < 18; n++) {
        var v = (vb >>> n) & 1;
        var a = size - 11 + (n % 3);
        var b = Math.floor(n / 3);
        grid[b][a] = v;
        grid[a][b] = v;
      }
    }
  }

  /**
   * Encodes text (UTF-8, byte mode) at level M in the smallest version that holds it.
   * options.mask (0-7) forces a mask; options.minVersion raises the smallest version tried.
   */
  function encode(text, options) {
    options = options || {};
    var bytes = utf8Bytes(String(text));
    var version = chooseVersion(bytes.length, options.minVersion);
    var codewords = finalMessage(dataCodewords(bytes, version), version);
    var m = new Matrix(version);
    drawFunctionPatterns(m, version);
    placeCodewords(m, codewords);
    var best = null;
    var bestMask = -1;
    var candidates = options.mask === undefined || options.mask === null ? [0, 1, 2, 3, 4, 5, 6, 7] : [options.mask];
    var bestScore = Infinity;
    candidates.forEach(function (mask) {
      if (!(mask >= 0 && mask <= 7)) throw new RangeError("QR: mask must be 0-7");
      var grid = masked(m, mask);
      var score = candidates.length === 1 ? 0 : penalty(grid);
      if (score < bestScore) {
        bestScore = score;
        best = grid;
        bestMask = mask;
      }
    });
    drawFormatAndVersion(best, version, bestMask);
    return { version: version, mask: bestMask, size: m.size, modules: best };
  }

  /**
   * Paints a code on a canvas with a quiet zone (4 modules by default). Every module gets the
   * same whole number of device pixels so that edges stay sharp; the canvas is then shown at
   * (at most) options.cssSize CSS pixels.
   */
  function draw(canvas, code, options) {
    options = options || {};
    var quiet = options.quiet === undefined ? 4 : options.quiet;
    var total = code.size + quiet * 2;
    var ratio = (typeof window !== "undefined" && window.devicePixelRatio) || 1;
    var cssSize = options.cssSize || total * 8;
    var scale = Math.max(1, Math.floor((cssSize * ratio) / total));
    var px = total * scale;
    canvas.width = px;
    canvas.height = px;
    canvas.style.width = px / ratio + "px";
    canvas.style.height = px / ratio + "px";
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = options.light || "#ffffff";
    ctx.fillRect(0, 0, px, px);
    ctx.fillStyle = options.dark || "#000000";
    for (var r = 0; r < code.size; r++) {
      for (var c = 0; c < code.size; c++) {
        if (code.modules[r][c]) ctx.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
      }
    }
    return scale;
  }

  var QR = { encode: encode, draw: draw, MAX_VERSION: MAX_VERSION };
  if (typeof module !== "undefined" && module.exports) module.exports = QR;
  else root.QR = QR;
})(typeof self !== "undefined" ? self : this);
